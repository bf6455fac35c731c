"""Test-wide settings: offline, headless, and polite to a 2-core machine."""

from __future__ import annotations

import os

from engine.offline import keep_offline

# Set before anything imports transformers / Qt / VTK.
keep_offline()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSOpenGLRenderWindow")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # engine-only installs without torch are not supported, but don't crash collection
        yield
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (small tensors: a second thread only adds contention, and it
    keeps timings comparable); use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
