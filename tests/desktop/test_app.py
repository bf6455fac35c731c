"""speechct-app's command line, and the whole --selftest in a subprocess (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from desktop.app import parse_args
from tests.engine.tiny_bundle import tiny_bundle_path

REPO = Path(__file__).resolve().parents[2]


def test_arguments():
    a = parse_args(["study/dicom", "--bundle", "b", "--library", "l"])
    assert (a.path, a.bundle, a.library, a.selftest) == ("study/dicom", "b", "l", False)
    a = parse_args(["--selftest", "--selftest-out", "o"])
    assert a.path is None and a.selftest and a.selftest_out == "o"


def test_a_postgresql_library_stays_a_url(tmp_path, monkeypatch):
    from desktop.app import library_setting

    monkeypatch.chdir(tmp_path)
    url = "postgresql://reader@pacs-db.example:5432/speechct"
    assert library_setting(url) == url  # not resolved into a folder named 'postgresql:'
    assert library_setting("lib") == str(tmp_path / "lib")


def test_no_display_is_a_clear_exit(monkeypatch, capsys):
    from desktop.app import main

    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert main([]) == 2
    assert "--selftest" in capsys.readouterr().err


@pytest.mark.slow  # loads the Whisper backbone and renders four views (~90 s on this shared CPU)
def test_selftest_passes_and_writes_structured_pngs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "png"
    proc = subprocess.run([sys.executable, "-m", "desktop.app", "--selftest", "--bundle", str(tiny_bundle_path()),
                           "--selftest-out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "FAIL" not in proc.stdout
    for name in ("axial", "coronal", "sagittal", "3d", "main-window"):
        img = QImage(str(out / f"{name}.png"))
        assert not img.isNull() and img.width() > 100
    # the 3D view shows bright bone in the middle on a dark background
    img = QImage(str(out / "3d.png")).convertToFormat(QImage.Format.Format_RGB888)
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3]
    grey = arr.reshape(img.height(), img.width(), 3).mean(axis=2)
    h, w = grey.shape
    corner, centre = grey[: h // 10, : w // 10].mean(), grey[h // 3: 2 * h // 3, w // 3: 2 * w // 3].max()
    # bone is lit grey, not white (its brightest centre pixel is ~150 with the reading-room colours): ask
    # for a structure 100 grey levels above the background, which an empty or washed-out render is not
    assert corner < 30 and centre > corner + 100, (corner, centre)


def test_selftest_without_bundle_fails_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "desktop.app", "--selftest", "--bundle", str(tmp_path / "none")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "FAIL engine:" in proc.stdout and "none" in proc.stdout
