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
    order: list[str] = []
    for name, view in viewer.views.items():
        def spy(n=name, draw=view.render_queued):
            order.append(n)
            draw()

        view.render_queued = spy
    queue.flush()
    assert order[-1] == "3d" and set(order[:-1]) == {"axial", "coronal", "sagittal"}, order
    assert v3._asked == asked + 1
    from desktop.viewer.volume3d import RAY_CAST_THREADS  # and one core is left to the GUI thread

    assert v3.worker.mapper.GetNumberOfThreads() == RAY_CAST_THREADS == max(1, (os.cpu_count() or 2) - 1)
