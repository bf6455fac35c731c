"""A QVTKRenderWindowInteractor whose Qt events we handle ourselves (VTK's interactor styles are
bypassed so every gesture goes through ``ViewerState`` and stays testable without pixels).

Renders go through one app-wide queue that draws one view per event-loop turn: with software
OpenGL a view's GL context takes a large share of the 100 ms budget, and four views drawn back to back
would hold the event loop (input, timers, the recording meter) for all of them. A view's context and its
first render are never paid in the same turn: a view without a context gets it in one turn and is drawn
in the next. The slice views render without multisampling: on software OpenGL a multisampled
framebuffer multiplies both the context's set-up and every render's rasterisation, and a slice is a
textured rectangle whose pixels it does not change (only the crosshair's edges would be smoother). A view
draws itself when shown, exposed or resized, without waiting for input. The 3D view waits in the same
queue, so a new study's slices are drawn before its ray casting starts (which would otherwise take the
CPU from them). Other work of that size that must not share a turn with a context or a render (building
a view's widget) waits in the same queue as a step (``RenderQueue.add_step``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import shiboken6
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text actors)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (volume mappers)
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor
from vtkmodules.vtkRenderingCore import vtkRenderer

from .vtk_image import render_window_rgb

CLICK_SLOP_PX = 3


class _Step:
    """A piece of work waiting in the render queue for a turn of its own; ``owner`` deleted: skipped."""

    def __init__(self, owner: QObject, run: Callable[[], None]):
        self.owner, self.run = owner, run


class RenderQueue(QObject):
    """Views waiting to be drawn, oldest first; one is drawn per event-loop turn. A view deleted
    while waiting (a study switch) is skipped, never called. Steps (``add_step``) wait in the same
    line and take a turn each."""

    _instance: RenderQueue | None = None

    def __init__(self):
        super().__init__()
        self.waiting: deque = deque()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._next)

    @classmethod
    def instance(cls) -> RenderQueue:
        if cls._instance is None or not shiboken6.isValid(cls._instance):
            cls._instance = cls()
        return cls._instance

    def add(self, view) -> None:
        if not any(v is view for v in self.waiting):
            self.waiting.append(view)
        if not self.timer.isActive():
            self.timer.start()

    def add_step(self, owner: QObject, run: Callable[[], None]) -> None:
        """Run ``run`` in a turn of its own, after everything waiting now (a view built in a step and
        readied there gets its GL context in the next turn, not in the same one)."""
        self.waiting.append(_Step(owner, run))
        if not self.timer.isActive():
            self.timer.start()

    def _next(self) -> None:
        while self.waiting:
            view = self.waiting.popleft()
            if isinstance(view, _Step):
                if not shiboken6.isValid(view.owner):
                    continue
                view.run()
                break
            if not shiboken6.isValid(view):
                continue
            if view.isVisible():
                if not getattr(view, "initialised", True):  # its GL context this turn, its picture the next
                    view.ensure_initialised()
                    self.waiting.appendleft(view)
                    break
                view.render_queued()
                break
            if view.prepare_requested and not view.initialised:  # a hidden view readied ahead of use
                view.ensure_initialised()
                break
        if self.waiting:
            self.timer.start()

    def flush(self) -> None:
        """Draw everything waiting now (tests, screenshots)."""
        while self.waiting:
            self._next()


class RenderView(QVTKRenderWindowInteractor):
    maximiseToggled = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.GetRenderWindow().SetMultiSamples(0)  # before the context exists (module docstring)
        self.GetRenderWindow().AddRenderer(self.renderer)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(120, 120)
        self._initialised = False
        self.prepare_requested = False
        self._press_button = None
        self._press_pos = None
        self._last_pos = None
        self._moved = 0.0

    # ---------------------------------------------------------------- rendering
    @property
    def initialised(self) -> bool:
        return self._initialised

    def prepare(self) -> None:
        """Create the GL context now, through the queue, while the view is still hidden (the app
        does this while the first study is read, so its images need only a render once it is)."""
        self.prepare_requested = True
        RenderQueue.instance().add(self)

    def ensure_initialised(self) -> None:
        if not self._initialised:
            self._initialised = True
            self.Initialize()

    def showEvent(self, event):  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.schedule_render()  # the first picture, without waiting for a wheel, key or click

    def paintEvent(self, ev):  # noqa: N802
        # Qt repaints (expose, un-maximise, a neighbour closing) must draw the scene as the state says
        # it is: QVTKRenderWindowInteractor's own paint renders whatever camera VTK last had, and
        # would create the GL context here, outside the queue.
        self.schedule_render()

    def resizeEvent(self, ev):  # noqa: N802
        # QVTKRenderWindowInteractor calls the *base* vtkRenderWindow.SetSize, which never resizes an
        # OSMesa window's buffer: the next render writes past it (segfault). Dispatch virtually.
        scale = self._getPixelRatio()
        w, h = int(round(scale * self.width())), int(round(scale * self.height()))
        rw = self.GetRenderWindow()
        rw.SetDPI(int(round(72 * scale)))
        rw.SetSize(w, h)
        self._Iren.SetSize(w, h)
        self._Iren.ConfigureEvent()
        self.schedule_render()  # the camera's fit depends on the widget's size: recompute it

    def schedule_render(self) -> None:
        """Coalesce many state changes into one render, drawn from the queue."""
        RenderQueue.instance().add(self)

    def render_queued(self) -> None:
        """What the queue calls when this view's turn comes: draw now."""
        self.render_now()

    def render_now(self) -> None:
        self.ensure_initialised()
        self.update_scene()
        self.GetRenderWindow().Render()

    def update_scene(self) -> None:  # subclasses move cameras/actors here
        pass

    def snapshot(self) -> np.ndarray:
        """Render and return the view's pixels, (rows, cols, 3) uint8."""
        self.render_now()
        return render_window_rgb(self.GetRenderWindow())

    def pixels_per_mm(self) -> float:
        cam = self.renderer.GetActiveCamera()
        h = max(self.height(), 1)
        return h / (2.0 * cam.GetParallelScale())

    # ---------------------------------------------------------------- mouse plumbing
    def mousePressEvent(self, ev):  # noqa: N802
        self.setFocus()
        self._press_button = ev.button()
        self._press_pos = self._last_pos = ev.position()
        self._moved = 0.0

    def mouseMoveEvent(self, ev):  # noqa: N802
        if self._press_button is None:
            return
        pos = ev.position()
        dx, dy = pos.x() - self._last_pos.x(), pos.y() - self._last_pos.y()
        self._last_pos = pos
        self._moved += abs(dx) + abs(dy)
        self.on_drag(self._press_button, dx, dy, ev.modifiers())

    def mouseReleaseEvent(self, ev):  # noqa: N802
        if self._press_button is not None and self._moved <= CLICK_SLOP_PX:
            self.on_click(self._press_button, ev.position().x(), ev.position().y())
        self._press_button = None

    def mouseDoubleClickEvent(self, ev):  # noqa: N802
        self.maximiseToggled.emit()

    def enterEvent(self, ev):  # noqa: N802
        pass

    def leaveEvent(self, ev):  # noqa: N802
        pass

    def keyReleaseEvent(self, ev):  # noqa: N802
        ev.ignore()

    def on_drag(self, button, dx: float, dy: float, modifiers) -> None:
        pass

    def on_click(self, button, x: float, y: float) -> None:
        pass
