"""Viewer interaction state, free of rendering: tests drive it directly (napari's habit).

One ``ViewerState`` per open study: the linked crosshair point (LPS mm, shared by all views, so
scrolling one view moves the crosshair in the others), window/level (HU), and per-view zoom and
pan. Slice indices count from the patient's Inferior (axial), Anterior (coronal) and Right
(sagittal) end: index 0 is Home, the last one End; "up" (Up key, wheel away) adds one.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

from .geometry import NORMAL_AXIS, VIEWS, Geometry
from .measure import TOOLS, Measurement
from .presets import DEFAULT_PRESET, WindowPreset

MIN_WINDOW = 1.0
ZOOM_RANGE = (0.1, 40.0)


class ViewerState(QObject):
    cursorChanged = Signal()  # the crosshair point moved (any view's slice may have changed)
    windowLevelChanged = Signal(float, float)  # window, level (HU)
    cameraChanged = Signal(str)  # view name: zoom or pan changed
    resetDone = Signal()
    toolChanged = Signal(str)  # what a left-drag does: "wl", "ruler" or "ellipse"
    measurementsChanged = Signal()
    hoverChanged = Signal(str)  # view name: the point (and its HU) under the mouse changed

    def __init__(self, geometry: Geometry, parent: QObject | None = None):
        super().__init__(parent)
        self.geometry = geometry
        self.cursor = geometry.centre.copy()
        self.window = DEFAULT_PRESET.window
        self.level = DEFAULT_PRESET.level
        self.preset_name: str | None = DEFAULT_PRESET.name
        self.zoom = {v: 1.0 for v in VIEWS}  # 1 = the whole study fits the view
        self.pan = {v: np.zeros(2) for v in VIEWS}  # mm along the view's screen (right, up)
        self.tool = "wl"
        self.measurements: list[Measurement] = []
        self.hover: dict[str, tuple[np.ndarray, float | None]] = {}  # view -> (LPS point, HU or None)

    # ---------------------------------------------------------------- slices and crosshair
    def slice_index(self, view: str) -> int:
        return self.geometry.slice_index(view, self.cursor)

    def n_slices(self, view: str) -> int:
        return self.geometry.n_slices(view)

    def set_slice(self, view: str, index: int) -> None:
        index = int(np.clip(index, 0, self.n_slices(view) - 1))
        new = self.cursor.copy()
        new[NORMAL_AXIS[view]] = self.geometry.position_of(view, index)
        self.set_cursor(new)

    def scroll(self, view: str, delta: int) -> None:
        self.set_slice(view, self.slice_index(view) + int(delta))

    def first(self, view: str) -> None:
        self.set_slice(view, 0)

    def last(self, view: str) -> None:
        self.set_slice(view, self.n_slices(view) - 1)

    def set_cursor(self, point) -> None:
        point = np.clip(np.asarray(point, float), self.geometry.bounds_min, self.geometry.bounds_max)
        if not np.allclose(point, self.cursor):
            self.cursor = point
            self.cursorChanged.emit()

    # ---------------------------------------------------------------- window / level
    def set_window_level(self, window: float, level: float, preset: str | None = None) -> None:
        window = max(float(window), MIN_WINDOW)
        self.preset_name = preset
        if (window, float(level)) != (self.window, self.level):
            self.window, self.level = window, float(level)
            self.windowLevelChanged.emit(self.window, self.level)

    def apply_preset(self, preset: WindowPreset) -> None:
        self.set_window_level(preset.window, preset.level, preset.name)

    def drag_window_level(self, dx_px: float, dy_px: float) -> None:
        """Left-drag: right widens the window, up raises the level; the rate scales with the window
        so a lung window and a bone window both feel the same under the hand."""
        rate = max(self.window, 50.0) / 250.0  # HU per pixel
        self.set_window_level(self.window + dx_px * rate, self.level - dy_px * rate)

    # ---------------------------------------------------------------- reading tools
    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        if tool != self.tool:
            self.tool = tool
            self.toolChanged.emit(tool)

    def add_measurement(self, m: Measurement) -> None:
        self.measurements.append(m)
        self.measurementsChanged.emit()

    def update_measurement(self) -> None:
        """The last measurement was changed in place (a drag in progress)."""
        self.measurementsChanged.emit()

    def remove_last_measurement(self, view: str | None = None) -> bool:
        for i in range(len(self.measurements) - 1, -1, -1):
            if view is None or self.measurements[i].view == view:
                del self.measurements[i]
                self.measurementsChanged.emit()
                return True
        return False

    def measurements_on_slice(self, view: str) -> list[Measurement]:
        """The measurements drawn on ``view``'s slice now on screen (within half a slice step)."""
        a = NORMAL_AXIS[view]
        half = float(self.geometry.step[a]) / 2.0
        return [m for m in self.measurements if m.view == view and abs(m.position - self.cursor[a]) <= half]

    def set_hover(self, view: str, point, hu: float | None) -> None:
        self.hover = {view: (np.asarray(point, float), hu)}
        self.hoverChanged.emit(view)

    def clear_hover(self, view: str) -> None:
        if self.hover.pop(view, None) is not None:
            self.hoverChanged.emit(view)

    # ---------------------------------------------------------------- zoom / pan
    def zoom_by(self, view: str, factor: float) -> None:
        z = float(np.clip(self.zoom[view] * factor, *ZOOM_RANGE))
        if z != self.zoom[view]:
            self.zoom[view] = z
            self.cameraChanged.emit(view)

    def pan_by(self, view: str, right_mm: float, up_mm: float) -> None:
        self.pan[view] = self.pan[view] + np.array([right_mm, up_mm])
        self.cameraChanged.emit(view)

    def reset(self) -> None:
        """`r`: crosshair to the centre, default window, zoom 1 and no pan in every view."""
        self.cursor = self.geometry.centre.copy()
        self.zoom = {v: 1.0 for v in VIEWS}
        self.pan = {v: np.zeros(2) for v in VIEWS}
        self.window, self.level, self.preset_name = DEFAULT_PRESET.window, DEFAULT_PRESET.level, DEFAULT_PRESET.name
        self.cursorChanged.emit()
        self.windowLevelChanged.emit(self.window, self.level)
        for v in VIEWS:
            self.cameraChanged.emit(v)
        self.resetDone.emit()
