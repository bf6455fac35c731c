"""Time from launching ``speechct-app`` to its main window, on a private Xvfb display.

The app is watched from outside (``xwininfo`` on the display's window tree), so the frozen bundle is
measured exactly as a user starts it. Two moments: the main window mapped (title "SpeechCT") and the
sample study shown (the title becomes "SpeechCT — <study>" once the volume is loaded and displayed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

POLL_S = 0.05


def available() -> bool:
    return shutil.which("Xvfb") is not None and shutil.which("xwininfo") is not None


def window_titles(display: str) -> list[str]:
    """Titles of every named window on ``display`` (empty when the display cannot be read)."""
    proc = subprocess.run(["xwininfo", "-root", "-tree", "-display", display],
                          capture_output=True, text=True, timeout=10)
    titles = []
    for line in proc.stdout.splitlines():
        start = line.find('"')
        end = line.find('"', start + 1)
        if start != -1 and end != -1:
            titles.append(line[start + 1:end])
    return titles


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """A private Xvfb (1920x1080x24) and its display name, read back through ``-displayfd``."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        raise RuntimeError("Xvfb did not report a display number")
    return proc, f":{number}"


def time_to_window(cmd: list[str], env: dict[str, str], timeout_s: float = 300.0) -> dict:
    """Launch ``cmd`` on a fresh Xvfb; seconds until the main window, and until the study is shown.

    Returns ``{"window_s": float | None, "study_s": float | None, "exit": int | None}`` (None: not
    seen within ``timeout_s``; ``exit``: the app's exit code if it ended by itself).
    """
    xvfb, display = start_xvfb()
    env = {**env, "DISPLAY": display}
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("VTK_DEFAULT_OPENGL_WINDOW", None)
    result: dict = {"window_s": None, "study_s": None, "exit": None}
    start = time.perf_counter()
    app = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        while time.perf_counter() - start < timeout_s:
            if app.poll() is not None:
                result["exit"] = app.returncode
                break
            titles = window_titles(display)
            now = round(time.perf_counter() - start, 2)
            if result["window_s"] is None and any(t == "SpeechCT" or t.startswith("SpeechCT ") for t in titles):
                result["window_s"] = now
            if any(t.startswith("SpeechCT —") for t in titles):
                result["study_s"] = now
                result["window_s"] = result["window_s"] or now
                break
            time.sleep(POLL_S)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
            try:
                app.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
                app.wait()
        xvfb.terminate()
        xvfb.wait(timeout=20)
    return result
