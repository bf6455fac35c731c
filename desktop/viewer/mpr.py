"""One slice view (axial, coronal or sagittal) of a study, cut along patient axes.

Gestures (docs/design.md §5): wheel or Up/Down one slice (Shift: 10), Home/End first/last, PageUp/Down
10; left-drag window (horizontal) / level (vertical), 1/2/3 presets; right-drag (up = in) or
Ctrl+wheel zoom; middle-drag pan; left click moves the linked crosshair; `r` resets; double-click
maximises (the four-up layout listens). Reading tools (``ViewerState.tool``): `m` ruler, `e` ellipse
ROI, `w` or Esc back to window/level; Delete removes the view's last measurement. The HU under the
mouse is shown in the lower-right corner.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from vtkmodules.vtkFiltersSources import vtkLineSource
from vtkmodules.vtkRenderingCore import vtkActor, vtkImageSlice, vtkPolyDataMapper
from vtkmodules.vtkRenderingImage import vtkImageResliceMapper

from .base_view import RenderView
from .geometry import NORMAL_AXIS
from .measure import Measurement, ellipse_stats, hu_at
from .overlay import SliceOverlay, study_text
from .presets import PRESET_KEYS
from .state import ViewerState

# Camera direction of projection and view-up in LPS per view; screen-right follows (dop × up):
# axial looks from the feet (R on screen left, A up), coronal from the front, sagittal from the
# patient's left (A on screen left).
CAMERA = {
    "axial": (np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])),
    "coronal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "sagittal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])),
}
CROSSHAIR_COLOUR = {"axial": (1.0, 0.3, 0.3), "coronal": (0.3, 1.0, 0.3), "sagittal": (0.4, 0.6, 1.0)}
FIT_MARGIN = 1.05


def screen_axes(view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dop, up = CAMERA[view]
    return dop, np.cross(dop, up), up


class SliceView(RenderView):
    def __init__(self, view: str, state: ViewerState, image, placement, parent=None, volume=None):
        super().__init__(parent)
        self.view = view
        self.state = state
        self.volume = volume  # for the HU under the mouse, ROI statistics and the study corner
        self._drawing: Measurement | None = None
        self.mapper = vtkImageResliceMapper()
        self.mapper.SliceFacesCameraOn()
        self.mapper.SliceAtFocalPointOn()
        self.slice = vtkImageSlice()
        self.slice.SetMapper(self.mapper)
        self.slice.GetProperty().SetInterpolationTypeToLinear()
        self.renderer.AddViewProp(self.slice)
        self.lines = []
        for _ in range(2):
            src = vtkLineSource()
            mapper = vtkPolyDataMapper()
            mapper.SetInputConnection(src.GetOutputPort())
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetOpacity(0.6)
            actor.PickableOff()
            self.renderer.AddActor(actor)
            self.lines.append((src, actor))
        self.overlay = SliceOverlay(self.renderer, view)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.set_study(state, image, placement, volume)

    def set_study(self, state: ViewerState, image, placement, volume=None) -> None:
        """Show another study in this view (its GL window is kept: creating one costs more than a render)."""
        self.state, self.volume, self._drawing = state, volume, None
        self.mapper.SetInputData(image)
        self.slice.SetUserMatrix(placement)
        self.overlay.set_study(study_text(volume.metadata) if volume is not None else "")
        state.cursorChanged.connect(self.schedule_render)
        state.windowLevelChanged.connect(self.schedule_render)
        state.measurementsChanged.connect(self.schedule_render)
        state.cameraChanged.connect(lambda v: v == self.view and self.schedule_render())
        state.hoverChanged.connect(lambda v: v == self.view and self.schedule_render())
        self.schedule_render()

    def thickness_mm(self) -> float:
        """The slice thickness this view shows: the acquired thickness on the acquisition plane (axial),
        the reformat's step elsewhere."""
        a = NORMAL_AXIS[self.view]
        step = float(self.state.geometry.step[a])
        if self.view == "axial" and self.volume is not None:
            return float(self.volume.metadata.get("slice_thickness") or step)
        return step

    # ---------------------------------------------------------------- scene
    def update_scene(self) -> None:
        st, g = self.state, self.state.geometry
        dop, right, up = screen_axes(self.view)
        a = NORMAL_AXIS[self.view]
        extent = g.bounds_max - g.bounds_min + g.step  # voxel edges, not centres
        width, height = float(np.abs(right) @ extent), float(np.abs(up) @ extent)
        aspect = max(self.width(), 1) / max(self.height(), 1)
        cam = self.renderer.GetActiveCamera()
        cam.SetParallelScale(max(height / 2.0, width / 2.0 / aspect) * FIT_MARGIN / st.zoom[self.view])
        focal = g.centre.copy()
        focal[a] = st.cursor[a]
        focal = focal - right * st.pan[self.view][0] - up * st.pan[self.view][1]
        distance = float(np.max(extent)) * 2.0
        cam.SetFocalPoint(*focal)
        cam.SetPosition(*(focal - dop * distance))
        cam.SetViewUp(*up)
        cam.SetClippingRange(distance * 0.5, distance * 1.5)
        prop = self.slice.GetProperty()
        prop.SetColorWindow(st.window)
        prop.SetColorLevel(st.level)
        # Crosshair: the other two views' planes, drawn a hair in front of this slice.
        lift = st.cursor - dop * 0.5 * float(g.step[a])
        colours = [CROSSHAIR_COLOUR[v] for v in CROSSHAIR_COLOUR if v != self.view]
        for (src, actor), axis, colour in zip(self.lines, (right, up), colours, strict=True):
            span = float(np.abs(axis) @ extent)
            src.SetPoint1(*(lift - axis * span))
            src.SetPoint2(*(lift + axis * span))
            actor.GetProperty().SetColor(*colour)
        self.overlay.update(index=st.slice_index(self.view), count=st.n_slices(self.view), window=st.window,
                            level=st.level, zoom=st.zoom[self.view], preset=st.preset_name,
                            position_mm=float(st.cursor[a]), thickness_mm=self.thickness_mm(),
                            hover=st.hover.get(self.view))
        self.overlay.set_measurements(st.measurements_on_slice(self.view), -dop * 0.6 * float(g.step[a]))

    def world_at(self, x_px: float, y_px: float) -> np.ndarray:
        """LPS point under widget pixel (x, y) on this view's current slice."""
        self.update_scene()
        ratio = self.devicePixelRatioF()
        h = self.GetRenderWindow().GetSize()[1]
        self.renderer.SetDisplayPoint(x_px * ratio, h - 1 - y_px * ratio, 0.0)
        self.renderer.DisplayToWorld()
        wx, wy, wz, ww = self.renderer.GetWorldPoint()
        point = np.array([wx, wy, wz]) / (ww or 1.0)
        point[NORMAL_AXIS[self.view]] = self.state.cursor[NORMAL_AXIS[self.view]]
        return point

    # ---------------------------------------------------------------- reading tools
    def mousePressEvent(self, ev):  # noqa: N802
        if ev.button() == Qt.MouseButton.LeftButton and self.state.tool != "wl":
            self.setFocus()
            p = self.world_at(ev.position().x(), ev.position().y())
            dop, right, up = screen_axes(self.view)
            self._drawing = Measurement(self.state.tool, self.view, float(self.state.cursor[NORMAL_AXIS[self.view]]),
                                        p, p.copy(), right, up)
            self.state.add_measurement(self._drawing)
            return
        super().mousePressEvent(ev)

    def mouseMoveEvent(self, ev):  # noqa: N802
        x, y = ev.position().x(), ev.position().y()
        if self._drawing is not None:
            self._drawing.p2 = self.world_at(x, y)
            self.state.update_measurement()
            return
        if self._press_button is None and self.volume is not None:
            p = self.world_at(x, y)
            self.state.set_hover(self.view, p, hu_at(self.volume, p))
        super().mouseMoveEvent(ev)

    def mouseReleaseEvent(self, ev):  # noqa: N802
        if self._drawing is not None:
            m, self._drawing = self._drawing, None
            m.p2 = self.world_at(ev.position().x(), ev.position().y())
            if m.length_mm < 1.0:  # a click, not a measurement
                self.state.remove_last_measurement(self.view)
                return
            if m.kind == "ellipse" and self.volume is not None:
                m.stats = ellipse_stats(self.volume, m)
            self.state.update_measurement()
            return
        super().mouseReleaseEvent(ev)

    def leaveEvent(self, ev):  # noqa: N802
        self.state.clear_hover(self.view)

    # ---------------------------------------------------------------- gestures
    def on_drag(self, button, dx, dy, modifiers) -> None:
        st = self.state
        if button == Qt.MouseButton.LeftButton:
            st.drag_window_level(dx, dy)
        elif button == Qt.MouseButton.RightButton:
            st.zoom_by(self.view, float(np.exp(-dy / 100.0)))
        elif button == Qt.MouseButton.MiddleButton:
            mm = 1.0 / self.pixels_per_mm()
            st.pan_by(self.view, dx * mm, -dy * mm)

    def on_click(self, button, x, y) -> None:
        if button == Qt.MouseButton.LeftButton:
            self.state.set_cursor(self.world_at(x, y))

    def wheelEvent(self, ev):  # noqa: N802
        delta = ev.angleDelta()
        notches = (delta.y() or delta.x()) / 120.0  # Shift turns the wheel sideways on some systems
        mods = ev.modifiers()
        if mods & Qt.KeyboardModifier.ControlModifier:
            self.state.zoom_by(self.view, 1.1 ** notches)
        else:
            step = 10 if mods & Qt.KeyboardModifier.ShiftModifier else 1
            self.state.scroll(self.view, int(round(notches)) * step)
        ev.accept()

    def keyPressEvent(self, ev):  # noqa: N802
        st, key = self.state, ev.key()
        step = 10 if ev.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1
        if key == Qt.Key.Key_Up:
            st.scroll(self.view, step)
        elif key == Qt.Key.Key_Down:
            st.scroll(self.view, -step)
        elif key == Qt.Key.Key_PageUp:
            st.scroll(self.view, 10)
        elif key == Qt.Key.Key_PageDown:
            st.scroll(self.view, -10)
        elif key == Qt.Key.Key_Home:
            st.first(self.view)
        elif key == Qt.Key.Key_End:
            st.last(self.view)
        elif key == Qt.Key.Key_R:
            st.reset()
        elif key == Qt.Key.Key_M:
            st.set_tool("ruler")
        elif key == Qt.Key.Key_E:
            st.set_tool("ellipse")
        elif key in (Qt.Key.Key_W, Qt.Key.Key_Escape):
            st.set_tool("wl")
        elif key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            st.remove_last_measurement(self.view)
        elif ev.text() in PRESET_KEYS:
            st.apply_preset(PRESET_KEYS[ev.text()])
        else:
            ev.ignore()
            return
        ev.accept()
