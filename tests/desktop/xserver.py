"""A private X server (Xvfb) for tests that need what an X desktop does and offscreen Qt does not:
GL windows exposed and painted by the window system, key auto-repeat, X input events (xdotool).

Skipped where Xvfb is missing, except under ``CI=true``, where a missing tool fails the run
(``scripts/system-deps.sh`` installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

SCREEN = "1600x1000x24"


def need(*tools: str) -> None:
    """Skip (or, under CI, fail) unless every command in ``tools`` is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"needs {', '.join(missing)} (scripts/system-deps.sh installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def xserver(tmp_path):
    """Start Xvfb on a free display with X's default key auto-repeat (660 ms delay, 25/s) switched
    on; yield an environment for child processes (DISPLAY set, Qt and VTK on X, not offscreen)."""
    need("Xvfb", "xset")
    proc = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", SCREEN, "-nolisten", "tcp",
                             "-ardelay", "660", "-arinterval", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        display = proc.stdout.readline().strip()
        if not display:
            pytest.fail("Xvfb did not report a display")
        env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "VTK_DEFAULT_OPENGL_WINDOW")}
        env.update(DISPLAY=f":{display}", QT_QPA_PLATFORM="xcb", HOME=str(tmp_path))
        subprocess.run(["xset", "r", "on"], env=env, check=True, timeout=10)
        subprocess.run(["xset", "r", "rate", "660", "25"], env=env, check=True, timeout=10)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
