"""The study viewer: a title line naming the study (and its role, e.g. "Current" or "Prior"), then
axial, coronal, sagittal and 3D in a 2×2 grid; double-click one to maximise it, double-click again
to return to four-up.

A viewer readied ahead of its study (``build_later``) builds its views one per event-loop turn, in the
render queue's line, so that no turn pays for several views' widgets (native windows, VTK objects, text
actors) or for a view's widget and a GL context together; a study arriving first finishes the build at
once."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from engine.volume import Volume

from .base_view import RenderQueue
from .geometry import VIEWS, Geometry
from .mpr import SliceView
from .overlay import study_text
from .state import ViewerState
from .volume3d import VolumeView
from .vtk_image import image_data, placement

GRID = {"axial": (0, 0), "sagittal": (0, 1), "coronal": (1, 0), "3d": (1, 1)}


def placeholder_volume() -> Volume:
    """A 2×2×2 volume of air: what a viewer readied before any study is read shows (hidden)."""
    return Volume(np.full((2, 2, 2), -1000, np.int16), (1.0, 1.0, 1.0), metadata={"series_description": ""})


class StudyViewer(QWidget):
    def __init__(self, volume: Volume, parent=None, *, with_3d: bool = True, role: str = "",
                 build_later: bool = False):
        super().__init__(parent)
        self.volume = volume
        self.geometry = Geometry.of(volume)
        self.state = ViewerState(self.geometry, self)
        self.title = QLabel()
        self.title.setObjectName("studyTitle")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.set_role(role)
        grid_host = QWidget(self)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        outer.addWidget(self.title)
        outer.addWidget(grid_host, 1)
        self._grid_host = grid_host
        self._image, self._place = image_data(volume), placement(self.geometry)
        self.views: dict[str, QWidget] = {}
        self.maximised: str | None = None
        self._grid = QGridLayout(grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self._to_build = [*VIEWS, "3d"] if with_3d else list(VIEWS)
        self._prepare = False  # ready each view's GL window as it is built
        if build_later:
            RenderQueue.instance().add_step(self, self._build_step)
        else:
            self.finish_build()

    # ---------------------------------------------------------------- building
    @property
    def built(self) -> bool:
        return not self._to_build

    def _build_view(self, name: str) -> None:
        if name == "3d":
            view: QWidget = VolumeView(self.volume, self.geometry, self._grid_host)
        else:
            view = SliceView(name, self.state, self._image, self._place, self._grid_host, volume=self.volume)
        self.views[name] = view
        self._grid.addWidget(view, *GRID[name])
        view.maximiseToggled.connect(lambda n=name: self.toggle_maximise(n))
        if self.maximised is not None and name != self.maximised:
            view.hide()
        if self._prepare and hasattr(view, "prepare"):
            view.prepare()

    def _build_step(self) -> None:
        """One view, in a render-queue turn of its own; the next waits behind what this one queued."""
        if self._to_build:
            self._build_view(self._to_build.pop(0))
        if self._to_build:
            RenderQueue.instance().add_step(self, self._build_step)
        else:
            self._image = self._place = None  # the views hold what they show

    def finish_build(self) -> None:
        """Every view not built yet, now (a study to show has arrived)."""
        while self._to_build:
            self._build_view(self._to_build.pop(0))
        self._image = self._place = None  # the views hold what they show

    def set_volume(self, volume: Volume) -> None:
        """Show another study in the same views: a new ``state`` (crosshair, W/L, zoom, measurements
        start afresh), the GL windows kept. Listeners of the old ``state`` must reconnect."""
        self.finish_build()
        old = self.state
        self.volume = volume
        self.geometry = Geometry.of(volume)
        self.state = ViewerState(self.geometry, self)
        image, place = image_data(volume), placement(self.geometry)
        for name, view in self.views.items():
            if name == "3d":
                view.set_volume(volume, self.geometry)
            else:
                view.set_study(self.state, image, place, volume)
        old.deleteLater()  # its connections to the views go with it
        self.set_role(self.role)

    def set_role(self, role: str) -> None:
        """The title line: "<role>: <description> · <date> · series N · modality" (no patient identifiers)."""
        self.role = role
        info = study_text(self.volume.metadata).replace("\n", " · ").replace("  ", " · ")
        self.title.setText(f"{role}: {info}" if role else info)

    def toggle_maximise(self, name: str) -> None:
        self.maximised = None if self.maximised == name else name
        for n, view in self.views.items():
            view.setVisible(self.maximised is None or n == self.maximised)
        for view in self.views.values():
            if view.isVisible():
                view.schedule_render()

    def prepare(self) -> None:
        """Ready the slice views' GL windows while hidden (see ``RenderView.prepare``); views not built
        yet are readied as they are built."""
        self._prepare = True
        for view in self.views.values():
            if hasattr(view, "prepare"):
                view.prepare()

    def snapshots(self) -> dict[str, np.ndarray]:
        """Each visible view rendered to (rows, cols, 3) uint8 pixels."""
        return {n: v.snapshot() for n, v in self.views.items() if v.isVisible()}

    def close_views(self) -> None:
        """Release the render windows (VTK needs this before the widgets die); no view is built after."""
        self._to_build = []
        for view in self.views.values():
            view.Finalize()
