"""The study browser gives every entry a thumbnail read in a worker: sample studies show their
mid axial slice (body brighter than lungs, where the volume says they are), unreadable studies an
error placeholder with the reader's one-line message, and a second panel reuses the cache."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from scipy.ndimage import binary_erosion

from desktop.panels import studies
from desktop.panels.studies import STATE_ROLE, THUMB, StudiesPanel, sample_studies

TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(studies, "_THUMB_CACHE", {})


def make_panel(qtbot) -> StudiesPanel:
    panel = StudiesPanel()
    qtbot.addWidget(panel)
    return panel


def entries(panel: StudiesPanel) -> dict[str, object]:
    return {panel.list.item(i).data(Qt.ItemDataRole.UserRole)[0]: panel.list.item(i) for i in range(panel.list.count())}


def icon_grey(item) -> np.ndarray:
    img = item.icon().pixmap(THUMB, THUMB).toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    ptr = img.constBits()
    rows = np.frombuffer(ptr, np.uint8, img.bytesPerLine() * img.height()).reshape(img.height(), img.bytesPerLine())
    return rows[:, : img.width()].copy()


def test_every_sample_gets_a_worker_read_thumbnail_showing_body_brighter_than_lungs(qtbot):
    from engine.io import load_volume

    panel = make_panel(qtbot)
    samples = [str(p) for p in sample_studies()]
    assert len(samples) >= 3
    items = entries(panel)
    assert {items[s].data(STATE_ROLE) for s in samples} == {"pending"}  # placeholder meanwhile
    qtbot.waitUntil(lambda: panel.thumbnails_pending == 0, timeout=TIMEOUT_MS)
    assert len(panel.thumbnail_threads) == len(samples)
    assert threading.get_ident() not in panel.thumbnail_threads  # read off the GUI thread
    for path in samples:
        item = items[path]
        assert item.data(STATE_ROLE) == "ready", item.toolTip()
        grey = icon_grey(item)
        assert grey.shape == (THUMB, THUMB)
        # where the volume's mid slice is lung (air inside the chest) vs soft tissue, in icon pixels
        mid = load_volume(path).array
        mid = mid[mid.shape[0] // 2]
        step = mid.shape[0] // THUMB
        lung = binary_erosion((mid > -950) & (mid < -500), iterations=3)[::step, ::step]
        body = binary_erosion((mid > -100) & (mid < 200), iterations=3)[::step, ::step]
        assert lung.sum() > 20 and body.sum() > 20
        assert grey[body].mean() > grey[lung].mean() + 80, (path, grey[body].mean(), grey[lung].mean())
        assert grey[lung].mean() < 40  # lungs black in the mediastinal window


def test_unreadable_library_study_gets_an_error_placeholder_with_the_message(qtbot, tmp_path):
    panel = make_panel(qtbot)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    rec = SimpleNamespace(path=str(bad), description="Broken", uid="1.2.3", date="20250101", series=None)
    with qtbot.waitSignal(panel.thumbnailReady, timeout=TIMEOUT_MS, check_params_cb=lambda p: p == str(bad)):
        panel.set_library([rec])
    item = entries(panel)[str(bad)]
    assert item.data(STATE_ROLE) == "error"
    tip = item.toolTip()
    assert "cannot read" in tip and "broken.nii.gz" in tip.splitlines()[1]
    assert len(tip.splitlines()) == 2  # the path, then one line of error
    qtbot.waitUntil(lambda: panel.thumbnails_pending == 0, timeout=TIMEOUT_MS)


def test_a_second_panel_reuses_cached_thumbnails_without_reading(qtbot):
    first = make_panel(qtbot)
    qtbot.waitUntil(lambda: first.thumbnails_pending == 0, timeout=TIMEOUT_MS)
    second = make_panel(qtbot)
    assert second.thumbnails_pending == 0 and second.thumbnail_threads == []
    assert {it.data(STATE_ROLE) for it in entries(second).values()} == {"ready"}


def test_thumbnails_persist_on_disk_and_are_served_without_reading_the_study(qtbot, tmp_path, monkeypatch):
    import engine.io

    first = StudiesPanel(thumbnail_dir=tmp_path / "thumbs")
    qtbot.addWidget(first)
    qtbot.waitUntil(lambda: first.thumbnails_pending == 0, timeout=TIMEOUT_MS)
    n = len(sample_studies())
    assert len(list((tmp_path / "thumbs").glob("*.png"))) == n

    def no_reading(*_args, **_kwargs):
        raise AssertionError("the study was read although its thumbnail is on disk")

    monkeypatch.setattr(engine.io, "load_volume", no_reading)
    monkeypatch.setattr(studies, "_THUMB_CACHE", {})  # a new session: memory cache empty
    second = StudiesPanel(thumbnail_dir=tmp_path / "thumbs")
    qtbot.addWidget(second)
    qtbot.waitUntil(lambda: second.thumbnails_pending == 0, timeout=TIMEOUT_MS)
    assert len(second.thumbnail_threads) == n  # it did go to the worker, which found the PNGs
    assert {it.data(STATE_ROLE) for it in entries(second).values()} == {"ready"}
    a, b = (icon_grey(entries(p)[str(sample_studies()[0])]) for p in (first, second))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
