"""3D view: CPU ray-cast volume rendering (bone and soft-tissue surfaces) of a subsampled copy,
drawn in a thread of its own so the GUI thread never waits for it.

CPU ray casting (vtkFixedPointVolumeRayCastMapper) because it behaves the same under OSMesa,
Xvfb and real GPUs; the copy is subsampled so its largest side is <= ``MAX_SIDE`` voxels. A
render takes far longer than the event loop's 100 ms budget (docs/performance.md), so it
runs in a ``VolumeRenderer`` thread with its own offscreen render window; VTK releases
the interpreter lock while it renders. The widget only paints the latest picture and keeps the
camera (a plain vtkCamera: moving it is arithmetic, no GL). Requests coalesce: the thread always
draws the newest camera and size.

Gestures: left-drag rotates, right-drag / wheel zooms, middle-drag pans, `r` resets, double-click
maximises. An orientation cube (R/L, A/P, S/I faces) in the lower-left corner turns with the camera.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QWidget
from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction
from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor
from vtkmodules.vtkRenderingCore import (
    vtkCamera,
    vtkColorTransferFunction,
    vtkRenderer,
    vtkRenderWindow,
    vtkVolume,
    vtkVolumeProperty,
)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper

from engine.volume import Volume

from ..events import process_events
from .base_view import RenderQueue
from .geometry import Geometry
from .vtk_image import image_data, placement, render_window_rgb

MAX_SIDE = 128
# a ray every 2.5 pixels: the picture is hard to tell from one ray per 1.5 pixels (compared side
# by side) at under half the cost
IMAGE_SAMPLE_DISTANCE = 2.5
# one core stays with the GUI thread (and its slice renders), as torch's do (engine_service)
RAY_CAST_THREADS = max(1, (os.cpu_count() or 2) - 1)
BACKGROUND = (0.05, 0.05, 0.08)
# HU -> (opacity) and (r, g, b): faint soft tissue, opaque bone; air and lung transparent.
OPACITY = ((-1024, 0.0), (-300, 0.0), (-100, 0.008), (100, 0.015), (200, 0.0), (250, 0.3), (1000, 0.9))
COLOUR = ((-1024, (0.0, 0.0, 0.0)), (-100, (0.75, 0.45, 0.35)), (100, (0.9, 0.6, 0.5)),
          (250, (0.95, 0.9, 0.8)), (1000, (1.0, 1.0, 0.95)))


def camera_params(cam) -> tuple:
    return (cam.GetPosition(), cam.GetFocalPoint(), cam.GetViewUp(), cam.GetViewAngle())


class RendererSignals(QObject):
    rendered = Signal(int, object)  # request number, (rows, cols, 3) uint8


class VolumeRenderer:
    """Owns every VTK object of the 3D picture and draws it in its own thread; the GUI thread only
    posts requests (``set_volume``, ``request``) and receives ``signals.rendered``."""

    def __init__(self):
        self.signals = RendererSignals()
        self._lock = threading.Condition()
        self._volume = None  # (vtkImageData, sample distance, placement matrix), pending
        self._request = None  # (number, camera params, (w, h)), pending: only the newest counts
        self._stop = False
        self.renderer = self.marker = None
        self.ready = threading.Event()  # set once the thread has built its VTK objects
        self.thread = threading.Thread(target=self._run, name="volume-render", daemon=True)
        self.thread.start()  # not waited for: requests posted before the build wait in _request

    # ---------------------------------------------------------------- GUI thread
    def set_volume(self, image, sample_distance: float, matrix) -> None:
        with self._lock:
            self._volume = (image, sample_distance, matrix)
            self._lock.notify()

    def request(self, number: int, camera: tuple, size: tuple[int, int]) -> None:
        with self._lock:
            self._request = (number, camera, size)
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self.thread.join(30)

    # ---------------------------------------------------------------- render thread
    def _build(self):
        self.mapper = vtkFixedPointVolumeRayCastMapper()
        self.mapper.SetImageSampleDistance(IMAGE_SAMPLE_DISTANCE)
        self.mapper.AutoAdjustSampleDistancesOff()
        self.mapper.SetNumberOfThreads(RAY_CAST_THREADS)
        prop = vtkVolumeProperty()
        opacity, colour = vtkPiecewiseFunction(), vtkColorTransferFunction()
        for hu, a in OPACITY:
            opacity.AddPoint(hu, a)
        for hu, rgb in COLOUR:
            colour.AddRGBPoint(hu, *rgb)
        prop.SetScalarOpacity(opacity)
        prop.SetColor(colour)
        prop.SetInterpolationTypeToLinear()
        prop.ShadeOn()
        self.actor = vtkVolume()
        self.actor.SetMapper(self.mapper)
        self.actor.SetProperty(prop)
        self.renderer = vtkRenderer()
        self.renderer.AddVolume(self.actor)
        self.renderer.SetBackground(*BACKGROUND)
        self.marker = orientation_marker()
        # the process's own kind of GL window (GLX under X, OSMesa offscreen), never a second kind:
        # two GL libraries in one process share VTK's function pointers and the second one crashes
        window = vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetNumberOfLayers(2)
        window.AddRenderer(self.renderer)
        window.AddRenderer(self.marker)
        return window

    def _run(self) -> None:
        window = self._build()
        self.ready.set()
        try:
            while True:
                with self._lock:
                    while not self._stop and self._request is None:
                        self._lock.wait()
                    if self._stop:
                        return
                    volume, self._volume = self._volume, None
                    request, self._request = self._request, None
                if volume is not None:
                    image, distance, matrix = volume
                    self.mapper.SetInputData(image)
                    self.mapper.SetSampleDistance(distance)
                    self.actor.SetUserMatrix(matrix)
                number, (pos, focal, up, angle), (w, h) = request
                cam = self.renderer.GetActiveCamera()
                cam.SetPosition(*pos)
                cam.SetFocalPoint(*focal)
                cam.SetViewUp(*up)
                cam.SetViewAngle(angle)
                cam.SetUseHorizontalViewAngle(w < h)  # the angle spans the narrower side: a tall view still fits
                self.renderer.ResetCameraClippingRange()
                mcam = self.marker.GetActiveCamera()
                mcam.SetFocalPoint(0.0, 0.0, 0.0)
                mcam.SetPosition(*(-np.array(cam.GetDirectionOfProjection()) * 4.0))
                mcam.SetViewUp(*up)
                mcam.SetUseHorizontalViewAngle(w < h)
                self.marker.ResetCameraClippingRange()
                window.SetSize(max(w, 16), max(h, 16))
                window.Render()
                self.signals.rendered.emit(number, render_window_rgb(window))
        finally:
            window.Finalize()


def orientation_marker() -> vtkRenderer:
    """A labelled cube in LPS (its +x face is the patient's Left) in a corner viewport, drawn over
    the volume; its camera looks the way the main camera does."""
    cube = vtkAnnotatedCubeActor()
    for face, text in zip(("XPlus", "XMinus", "YPlus", "YMinus", "ZPlus", "ZMinus"), "LRPASI", strict=True):
        getattr(cube, f"Set{face}FaceText")(text)
    cube.SetFaceTextScale(0.55)
    cube.GetCubeProperty().SetColor(0.25, 0.3, 0.38)
    cube.GetTextEdgesProperty().SetColor(0.8, 0.8, 0.8)
    for axis, colour in zip("XYZ", ((1.0, 0.45, 0.45), (0.45, 1.0, 0.45), (0.5, 0.65, 1.0)), strict=True):
        for sign in ("Plus", "Minus"):
            getattr(cube, f"Get{axis}{sign}FaceProperty")().SetColor(*colour)
    ren = vtkRenderer()
    ren.SetViewport(0.0, 0.0, 0.22, 0.22)
    ren.SetLayer(1)
    ren.InteractiveOff()
    ren.AddViewProp(cube)
    return ren


class VolumeView(QWidget):
    maximiseToggled = Signal()
    prepare_requested = False  # RenderQueue: nothing to ready ahead (the render thread has its own window)

    def __init__(self, volume: Volume, geometry: Geometry, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(120, 120)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.camera = vtkCamera()
        self.worker = VolumeRenderer()
        self.worker.signals.rendered.connect(self._rendered)
        self.image: QImage | None = None
        self.rgb: np.ndarray | None = None
        self._asked = self._drawn = 0
        self._press_button = None
        self._last_pos = None
        self._moved = 0.0
        self.set_volume(volume, geometry)

    @property
    def renderer(self):
        """The render thread's renderer (None until it is built); read it only when the thread is idle."""
        return self.worker.renderer

    @property
    def marker(self):
        return self.worker.marker

    # ---------------------------------------------------------------- study and camera
    def set_volume(self, volume: Volume, geometry: Geometry) -> None:
        self.geometry = geometry
        stride = max(1, int(np.ceil(max(volume.shape) / MAX_SIDE)))
        # half a voxel between samples (the default 1 mm oversamples 2.8 mm voxels ~3×)
        self.worker.set_volume(image_data(volume, stride), min(volume.spacing) * stride / 2.0, placement(geometry))
        self.reset_camera()

    def reset_camera(self) -> None:
        """Anterior view, a little from the patient's right and above (the chest and the cube read
        as 3D), head up; the chest's bounding sphere fills the view."""
        g, cam = self.geometry, self.camera
        centre = g.centre
        radius = float(np.linalg.norm(g.bounds_max - g.bounds_min)) / 2.0
        cam.SetViewAngle(30.0)
        distance = radius / np.sin(np.radians(15.0))
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre - np.array([0.0, 1.0, 0.0]) * distance))
        cam.SetViewUp(0.0, 0.0, 1.0)
        cam.Azimuth(-25.0)
        cam.Elevation(12.0)
        cam.OrthogonalizeViewUp()
        cam.Zoom(1.3)  # the sphere is framed loosely; the chest fills more of the view
        self.schedule_render()

    # ---------------------------------------------------------------- rendering
    def _size(self) -> tuple[int, int]:
        ratio = self.devicePixelRatioF()
        return max(1, int(round(self.width() * ratio))), max(1, int(round(self.height() * ratio)))

    def schedule_render(self) -> None:
        """Ask for a picture through the app's RenderQueue: the slice views queued before this one
        draw first (a study switch queues all four), then the request goes to the render thread."""
        if self.isVisible():
            RenderQueue.instance().add(self)

    def render_queued(self) -> None:
        """The queue's turn: post the newest camera and size to the render thread (no wait)."""
        self._asked += 1
        self.worker.request(self._asked, camera_params(self.camera), self._size())

    def _rendered(self, number: int, rgb: np.ndarray) -> None:
        if number < self._drawn:
            return
        self._drawn = number
        self.rgb = rgb
        self.image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.shape[1] * 3,
                            QImage.Format.Format_RGB888).copy()
        self.update()

    def render_now(self, timeout_s: float = 60.0) -> None:
        """Render and wait for the picture (tests, screenshots)."""
        self._asked += 1
        self.worker.request(self._asked, camera_params(self.camera), self._size())
        deadline = time.perf_counter() + timeout_s
        while self._drawn < self._asked and time.perf_counter() < deadline:
            process_events()
            time.sleep(0.005)

    def snapshot(self) -> np.ndarray:
        self.render_now()
        return self.rgb if self.rgb is not None else np.zeros((self.height(), self.width(), 3), np.uint8)

    def paintEvent(self, ev):  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor.fromRgbF(*BACKGROUND))
        if self.image is not None:
            p.drawImage(QRectF(self.rect()), self.image)
        else:
            p.setPen(QColor(150, 150, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Rendering 3D…")
        p.end()

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        self.schedule_render()

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        self.schedule_render()

    def Finalize(self) -> None:  # noqa: N802  (the slice views' name: StudyViewer.close_views calls it)
        self.worker.stop()

    # ---------------------------------------------------------------- gestures
    def mousePressEvent(self, ev):  # noqa: N802
        self.setFocus()
        self._press_button = ev.button()
        self._last_pos = ev.position()
        self._moved = 0.0

    def mouseMoveEvent(self, ev):  # noqa: N802
        if self._press_button is None:
            return
        pos = ev.position()
        dx, dy = pos.x() - self._last_pos.x(), pos.y() - self._last_pos.y()
        self._last_pos = QPointF(pos)
        self._moved += abs(dx) + abs(dy)
        self.on_drag(self._press_button, dx, dy, ev.modifiers())

    def mouseReleaseEvent(self, ev):  # noqa: N802
        self._press_button = None

    def mouseDoubleClickEvent(self, ev):  # noqa: N802
        self.maximiseToggled.emit()

    def on_drag(self, button, dx, dy, modifiers) -> None:
        cam = self.camera
        if button == Qt.MouseButton.LeftButton:
            cam.Azimuth(-dx * 0.5)
            cam.Elevation(dy * 0.5)
            cam.OrthogonalizeViewUp()
        elif button == Qt.MouseButton.RightButton:
            cam.Dolly(float(np.exp(-dy / 100.0)))
        elif button == Qt.MouseButton.MiddleButton:
            fp, pos = np.array(cam.GetFocalPoint()), np.array(cam.GetPosition())
            up = np.array(cam.GetViewUp())
            right = np.cross(fp - pos, up)
            right /= np.linalg.norm(right) or 1.0
            mm = np.linalg.norm(fp - pos) * 0.002
            shift = (-right * dx + up * dy) * mm
            cam.SetFocalPoint(*(fp + shift))
            cam.SetPosition(*(pos + shift))
        self.schedule_render()

    def wheelEvent(self, ev):  # noqa: N802
        self.camera.Dolly(1.1 ** (ev.angleDelta().y() / 120.0))
        self.schedule_render()

    def keyPressEvent(self, ev):  # noqa: N802
        if ev.key() == Qt.Key.Key_R:
            self.reset_camera()
        else:
            ev.ignore()

