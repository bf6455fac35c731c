"""What the first study's findings and a study switch wait for: the engine's import starts at launch,
before the GUI's; a study is read while the engine is still being built (its read never waits for the
engine's lock or for torch's import); no thumbnail read competes with the first study; a switch's 3D
ray casting starts only after its slice views are drawn."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from desktop.engine_service import EngineService
from desktop.panels import studies
from desktop.panels.studies import StudiesPanel, sample_studies
from desktop.workers import TaskRunner

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 120_000



def _log_renders(views: dict) -> list[str]:
    """Wrap each view's ``render_queued`` so that its name is logged, in order, when it draws."""
    log: list[str] = []
    for name, view in views.items():
        def spy(n=name, draw=view.render_queued):
            log.append(n)
            draw()

        view.render_queued = spy
    return log

def test_the_app_starts_the_engine_import_before_importing_the_gui():
    code = (
        "import sys\n"
        "import desktop.preload as pre\n"
        "light = not any(m in sys.modules for m in ('torch', 'PySide6', 'engine.runtime'))\n"
        "seen = []\n"
        "def fake():\n"
        "    seen.append('PySide6.QtWidgets' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "pre.start_engine_import = fake\n"
        "from desktop import app\n"
        "try:\n"
        "    app.main([])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(light, seen)\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    # importing the preloader pulls in neither torch nor Qt; main() starts it before any Qt import
    assert run.stdout.split() == ["True", "[False]"], run.stdout


def test_the_engine_import_thread_imports_the_engine():
    from desktop.preload import ENGINE_MODULE, start_engine_import

    thread = start_engine_import()
    thread.join(120)
    assert not thread.is_alive() and thread.daemon
    assert importlib.import_module(ENGINE_MODULE).Engine is not None


_LOAD_SPAN = """
import sys, threading, time
import desktop.preload as pre
sys.setswitchinterval(0.001)  # as the app sets it (desktop.main_window)
paths = pre.torch_library_paths()
assert [p.name for p, _ in paths] == [name for name, _ in pre.TORCH_LIBRARIES], paths
assert all(pre.open_library(p, g) for p, g in paths[:2])  # libtorch_cpu's dependencies
span = {}
def load():
    span["start"] = time.perf_counter()
    if sys.argv[1] == "ours":
        span["loaded"] = pre.open_library(paths[2][0])
    else:  # torch's way: ctypes.CDLL (as Python's extension import) keeps the lock in dlopen
        import ctypes
        span["loaded"] = bool(ctypes.CDLL(str(paths[2][0])))
    span["end"] = time.perf_counter()
thread = threading.Thread(target=load)
ticks = []
thread.start()
while thread.is_alive():
    ticks.append(time.perf_counter())
quarter = (span["end"] - span["start"]) / 4  # the middle half: no switch interval at either end
inside = sum(span["start"] + quarter < t < span["end"] - quarter for t in ticks)
print(span["loaded"], "libtorch_cpu.so" in open("/proc/self/maps").read(), "torch" in sys.modules, inside)
"""


def test_torch_libraries_load_while_the_gui_thread_runs():
    """Loading libtorch_cpu (its static constructors: the longest stretch of torch's import) leaves
    the interpreter to the other threads; loaded torch's own way, it holds it throughout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(how):
        out = subprocess.run([sys.executable, "-c", _LOAD_SPAN, how], env=env, capture_output=True, text=True,
                             timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        loaded, mapped, torch_imported, inside = out.stdout.split()
        assert (loaded, mapped, torch_imported) == ("True", "True", "False"), out.stdout
        return int(inside)

    ours, torchs = run("ours"), run("torch")
    # in the middle of the load the main thread's loop ran (many thousands of turns) with ours, not with torch's way
    assert ours > 10_000 and ours > 100 * max(torchs, 1), (ours, torchs)


def test_the_engine_import_runs_no_full_collection_and_freezes_what_it_imported():
    code = (
        "import gc, sys\n"
        "import desktop.preload as pre\n"
        "full = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and info['generation'] == 2 and full.append(1))\n"
        "pre.start_engine_import().join(300)\n"
        "print(len(full), gc.isenabled(), gc.get_freeze_count() > 100_000, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    # each full collection over the import's objects held the interpreter for about 0.1 s
    assert run.stdout.split() == ["0", "True", "True", "True"], run.stdout


class _BlockedBuild:
    """Stands in for ``engine.runtime.Engine`` whose build is under way: while it waits, torch counts
    as half imported (its module lock held, as Python's import machinery holds it)."""

    building = threading.Event()
    release = threading.Event()

    def __init__(self, *args, **kwargs):
        import importlib._bootstrap as bootstrap

        import torch

        with bootstrap._ModuleLockManager("torch"):
            torch.__spec__._initializing = True
            try:
                self.building.set()
                self.release.wait(10 * TIMEOUT_MS / 1000)  # the test releases it
            finally:
                torch.__spec__._initializing = False


def test_a_study_is_read_while_the_engine_is_still_being_built(qtbot, monkeypatch):
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "Engine", _BlockedBuild)
    _BlockedBuild.building.clear()
    _BlockedBuild.release.clear()
    runner = TaskRunner()
    service = EngineService(runner, cache_dir=False)
    errors: list[str] = []
    service.failed.connect(errors.append)
    service.start()  # the engine's build, in one worker: it holds the service's lock until done
    assert _BlockedBuild.building.wait(60)
    got = []
    try:
        service.load_study(str(sample_studies()[0]), None, on_result=got.append)
        qtbot.waitUntil(lambda: bool(got), timeout=TIMEOUT_MS)  # before: it waited for the build
        assert got[0].shape == (64, 128, 128) and not errors
        assert service._engine is None  # read while the engine was still being built
    finally:
        _BlockedBuild.release.set()
        runner.wait(TIMEOUT_MS)


def test_thumbnail_reads_wait_for_the_first_study(qtbot, monkeypatch):
    monkeypatch.setattr(studies, "_THUMB_CACHE", {})
    panel = StudiesPanel(held=True)
    qtbot.addWidget(panel)
    assert panel.list.count() >= 3 and panel.thumbnails_pending == 0 and not panel.runner.busy
    panel.release_thumbnails()
    assert panel.thumbnails_pending == panel.list.count()
    qtbot.waitUntil(lambda: panel.thumbnails_pending == 0, timeout=TIMEOUT_MS)


def test_the_main_window_starts_no_thumbnail_read_before_a_study_opens(qtbot, tmp_path, monkeypatch):
    from desktop.main_window import MainWindow
    from desktop.settings import Settings
    from tests.engine.tiny_bundle import tiny_bundle_path

    monkeypatch.setattr(studies, "_THUMB_CACHE", {})
    w = MainWindow(Settings(bundle=str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                            recordings_dir=str(tmp_path / "rec")), cache_dir=False, save_settings=False)
    qtbot.addWidget(w)
    try:
        assert w.studies.thumbnails_pending == 0 and not w.studies.runner.busy
        with qtbot.waitSignal(w.findingsShown, timeout=TIMEOUT_MS):
            w.open_study(str(sample_studies()[0]))
        # released with the findings; the opened study's own thumbnail came from its volume
        qtbot.waitUntil(lambda: w.studies.thumbnails_pending == 0, timeout=TIMEOUT_MS)
        assert len(w.studies.thumbnail_threads) == len(sample_studies()) - 1
    finally:
        w.close()


def test_the_viewer_is_readied_in_a_later_event_loop_turn_than_the_first_show(qtbot, tmp_path, monkeypatch):
    """The window's construction and first show are one event-loop turn; the viewer's build (its GL
    windows' widgets, the 3D view) is the next, not stacked onto it."""
    from PySide6.QtCore import QTimer

    from desktop.main_window import MainWindow
    from desktop.settings import Settings
    from tests.engine.tiny_bundle import tiny_bundle_path

    order: list[str] = []
    real = MainWindow._ready_viewer

    def ready_viewer(self):
        order.append("viewer")
        real(self)

    monkeypatch.setattr(MainWindow, "_ready_viewer", ready_viewer)
    tick = QTimer()
    tick.setInterval(0)
    tick.timeout.connect(lambda: order.append("turn") if order[-1:] != ["turn"] else None)
    order.append("start")
    tick.start()
    w = MainWindow(Settings(bundle=str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                            recordings_dir=str(tmp_path / "rec")), cache_dir=False, save_settings=False)
    qtbot.addWidget(w)
    try:
        w.show()
        qtbot.waitUntil(lambda: "viewer" in order, timeout=TIMEOUT_MS)
        tick.stop()
        assert order[:3] == ["start", "turn", "viewer"], order  # before: ["start", "viewer", ...]
    finally:
        w.runner.wait(TIMEOUT_MS)
        w.close()


def test_the_3d_view_is_built_without_waiting_for_its_render_thread(qtbot, sample_volume, monkeypatch):
    """The render thread builds its VTK objects while the GUI thread goes on (it waited for them)."""
    import threading

    from desktop.viewer import volume3d
    from desktop.viewer.geometry import Geometry

    release = threading.Event()
    real_build = volume3d.VolumeRenderer._build

    def slow_build(self):
        release.wait(20)
        return real_build(self)

    monkeypatch.setattr(volume3d.VolumeRenderer, "_build", slow_build)
    view = volume3d.VolumeView(sample_volume, Geometry.of(sample_volume))
    qtbot.addWidget(view)
    try:
        assert not view.worker.ready.is_set() and view.renderer is None  # built, the thread still building
        view.resize(200, 200)
        view.show()
        view._asked += 1
        view.worker.request(view._asked, volume3d.camera_params(view.camera), view._size())  # asked before the build
        release.set()
        qtbot.waitUntil(lambda: view.image is not None, timeout=TIMEOUT_MS)
        assert view.renderer is not None and view.marker is not None
    finally:
        release.set()
        view.Finalize()


@pytest.fixture
def viewer(qtbot, sample_volume):
    from desktop.viewer.fourup import StudyViewer

    v = StudyViewer(sample_volume)
    qtbot.addWidget(v)
    v.resize(600, 500)
    v.show()
    qtbot.waitExposed(v)
    yield v
    v.close_views()


def test_a_switch_asks_for_the_3d_picture_only_after_its_slice_views_are_drawn(qtbot, viewer, sample_volume):
    from desktop.viewer.base_view import RenderQueue

    queue = RenderQueue.instance()
    queue.flush()
    v3 = viewer.views["3d"]
    qtbot.waitUntil(lambda: v3.image is not None, timeout=TIMEOUT_MS)
    asked = v3._asked
    viewer.set_volume(sample_volume)
    assert v3._asked == asked  # nothing posted to the render thread yet
    order = _log_renders(viewer.views)
    queue.flush()
    assert order[-1] == "3d" and set(order[:-1]) == {"axial", "coronal", "sagittal"}, order
    assert v3._asked == asked + 1
    from desktop.viewer.volume3d import RAY_CAST_THREADS  # and one core is left to the GUI thread

    assert v3.worker.mapper.GetNumberOfThreads() == RAY_CAST_THREADS == max(1, (os.cpu_count() or 2) - 1)


def test_no_event_loop_turn_pays_a_gl_context_and_a_render_or_two_contexts(qtbot, sample_volume):
    """Views shown before they were readied (the study was read before the hidden viewer's contexts were
    made): each turn of the render queue makes at most one GL context and then draws nothing; the
    pictures come in later turns, slice views before the 3D view."""
    from desktop.viewer.base_view import RenderQueue
    from desktop.viewer.fourup import StudyViewer

    queue = RenderQueue.instance()
    queue.flush()
    v = StudyViewer(sample_volume, with_3d=False)
    qtbot.addWidget(v)
    v.resize(600, 500)
    v.show()  # each view asks for its first picture (showEvent), none has a GL context yet
    queue.timer.stop()  # the test runs the queue's turns itself
    views = list(v.views.values())
    assert queue.waiting and not any(view.initialised for view in views)
    drawn = _log_renders(v.views)
    turns = []
    try:
        while queue.waiting:
            before_init, before_drawn = sum(view.initialised for view in views), len(drawn)
            queue._next()
            turns.append((sum(view.initialised for view in views) - before_init, len(drawn) - before_drawn))
        assert all(init <= 1 and draws <= 1 and not (init and draws) for init, draws in turns), turns
        assert sorted(drawn) == sorted(v.views) and all(view.initialised for view in views)
    finally:
        v.close_views()


def test_slice_views_render_without_multisampling(qtbot, sample_volume):
    """A multisampled framebuffer multiplies a software-OpenGL context's set-up and each render's
    rasterisation; a slice view draws a textured rectangle, which it does not change."""
    from desktop.viewer.fourup import StudyViewer

    v = StudyViewer(sample_volume, with_3d=False)
    qtbot.addWidget(v)
    try:
        assert [view.GetRenderWindow().GetMultiSamples() for view in v.views.values()] == [0, 0, 0]
    finally:
        v.close_views()


_FIRST_SHOW = """
import enum, tempfile
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from desktop.main_window import MainWindow
from desktop.settings import Settings
from tests.engine.tiny_bundle import tiny_bundle_path
tmp = Path(tempfile.mkdtemp())
made = []
real = enum.EnumType.__new__
def counting(mcls, name, bases, namespace, **kw):
    made.append(name)
    return real(mcls, name, bases, namespace, **kw)
enum.EnumType.__new__ = counting
w = MainWindow(Settings(bundle=str(tiny_bundle_path()), library=str(tmp / "lib"), recordings_dir=str(tmp / "rec")),
               cache_dir=False, save_settings=False)
w.resize(1200, 800)
w.show()
enum.EnumType.__new__ = real
print(len(made), " ".join(made), flush=True)
import os
os._exit(0)  # the engine's build in its worker is not what this measures
"""


def test_the_main_windows_first_show_creates_few_python_enum_classes():
    """PySide6 creates a class's Python enums on first use (~0.3-1 ms each). An application-wide
    Python event filter saw every event of the first show, Qt's internal objects' too, and resolving
    their types created ~120 enum classes of unrelated widgets (wizards, graphics views, processes)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", _FIRST_SHOW], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    count = int(run.stdout.split()[0])
    assert count < 40, run.stdout  # before: 138 (119 of them in the first show)


def test_the_hidden_viewer_is_built_one_view_per_event_loop_turn(qtbot, tmp_path, monkeypatch):
    """While the first study is read, the viewer readied ahead builds one view's widgets per turn, and
    never a view's widgets and a GL context in the same turn (before: all four views in one turn)."""
    from desktop.main_window import MainWindow
    from desktop.settings import Settings
    from desktop.viewer import mpr, volume3d
    from desktop.viewer.base_view import RenderQueue
    from tests.engine.tiny_bundle import tiny_bundle_path

    built: list[str] = []
    for cls in (mpr.SliceView, volume3d.VolumeView):
        def counting(self, *args, real=cls.__init__, **kwargs):
            built.append(type(self).__name__)
            real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    queue = RenderQueue.instance()
    queue.flush()
    w = MainWindow(Settings(bundle=str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                            recordings_dir=str(tmp_path / "rec")), cache_dir=False, save_settings=False)
    qtbot.addWidget(w)
    try:
        w._viewer_timer.stop()  # the test runs the turns itself: this one, then the render queue's
        w._ready_viewer()
        queue.timer.stop()
        turns = [(len(built), 0)]
        while queue.waiting:
            views = list(w.viewer.views.values())
            before_built = len(built)
            before_init = sum(getattr(v, "initialised", False) for v in views)
            queue._next()
            queue.timer.stop()
            turns.append((len(built) - before_built,
                          sum(getattr(v, "initialised", False) for v in views) - before_init))
        assert all(n <= 1 and not (n and init) for n, init in turns), turns  # before: [(4, 0), (0, 1), ...]
        assert sorted(built) == ["SliceView"] * 3 + ["VolumeView"] and w.viewer.built
        assert all(v.initialised for name, v in w.viewer.views.items() if name != "3d")
    finally:
        w.runner.wait(TIMEOUT_MS)
        w.close()


def test_a_study_arriving_during_the_build_finishes_it_at_once(qtbot, sample_volume):
    from desktop.viewer.base_view import RenderQueue
    from desktop.viewer.fourup import StudyViewer, placeholder_volume

    queue = RenderQueue.instance()
    queue.flush()
    v = StudyViewer(placeholder_volume(), build_later=True)
    qtbot.addWidget(v)
    try:
        v.prepare()
        queue.timer.stop()
        queue._next()  # the first view
        assert list(v.views) == ["axial"] and not v.built
        v.set_volume(sample_volume)
        assert list(v.views) == ["axial", "coronal", "sagittal", "3d"] and v.built
        assert all(view.volume is sample_volume for name, view in v.views.items() if name != "3d")
        v.resize(600, 500)
        v.show()
        queue.flush()  # the build's steps left in the queue do nothing; every view is drawn
        assert all(view.initialised for name, view in v.views.items() if name != "3d")
        assert v.views["axial"].snapshot().std() > 10
    finally:
        v.close_views()
