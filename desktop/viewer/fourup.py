"""The study viewer: a title line naming the study (and its role, e.g. "Current" or "Prior"), then
axial, coronal, sagittal and 3D in a 2×2 grid; double-click one to maximise it, double-click again
to return to four-up."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from engine.volume import Volume

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
    def __init__(self, volume: Volume, parent=None, *, with_3d: bool = True, role: str = ""):
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
        image, place = image_data(volume), placement(self.geometry)
        self.views: dict[str, QWidget] = {v: SliceView(v, self.state, image, place, grid_host, volume=volume)
                                          for v in VIEWS}
        if with_3d:
            self.views["3d"] = VolumeView(volume, self.geometry, grid_host)
        self.maximised: str | None = None
        self._grid = QGridLayout(grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        for name, view in self.views.items():
            self._grid.addWidget(view, *GRID[name])
            view.maximiseToggled.connect(lambda n=name: self.toggle_maximise(n))

    def set_volume(self, volume: Volume) -> None:
        """Show another study in the same views: a new ``state`` (crosshair, W/L, zoom, measurements
        start afresh), the GL windows kept. Listeners of the old ``state`` must reconnect."""
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
        """Ready the slice views' GL windows while hidden (see ``RenderView.prepare``)."""
        for view in self.views.values():
            if hasattr(view, "prepare"):
                view.prepare()

    def snapshots(self) -> dict[str, np.ndarray]:
        """Each visible view rendered to (rows, cols, 3) uint8 pixels."""
        return {n: v.snapshot() for n, v in self.views.items() if v.isVisible()}

    def close_views(self) -> None:
        """Release the render windows (VTK needs this before the widgets die)."""
        for view in self.views.values():
            view.Finalize()
