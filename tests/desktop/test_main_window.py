"""The main window on the tiny bundle: findings appear off the GUI thread, a dictation from a file
source produces dictation findings, discrepancies and similar studies; clicking a similar study
opens it beside the current one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PySide6.QtCore import QTimer

from desktop.dictation.sources import FileSource
from desktop.main_window import MainWindow
from desktop.panels.studies import sample_studies
from desktop.settings import Settings
from tests.engine.tiny_bundle import tiny_bundle_path

TIMEOUT_MS = 240_000


@pytest.fixture
def window(qtbot, tmp_path):
    samples = sample_studies()
    wav = samples[0].parent / "dictation.wav"
    settings = Settings(bundle=str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                        recordings_dir=str(tmp_path / "rec"))
    w = MainWindow(settings, source_factory=lambda: FileSource(wav), cache_dir=False, save_settings=False)
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    yield w
    w.close()


def test_study_opens_and_findings_come_from_a_worker_while_the_gui_keeps_running(qtbot, window):
    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    ran_on = []
    original = window.service.engine

    busy = []  # (start, end) of each engine call; the sleep stands for a slow model on a slow machine

    def spy():
        ran_on.append(threading.get_ident())
        start = time.perf_counter()
        time.sleep(0.4)
        busy.append((start, time.perf_counter()))
        return original()

    window.service.engine = spy
    timer.start()
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS) as blocker:
        window.open_study(str(sample_studies()[0]))
    timer.stop()
    analysis = blocker.args[0]
    assert len(analysis.findings) == 18 and window.findings.table.rowCount() == 18
    assert ran_on and threading.get_ident() not in ran_on  # every engine call ran off the GUI thread
    # and the GUI thread kept serving its timer while the engine was busy (none would land if it blocked)
    during = [t for t in ticks if any(a <= t <= b for a, b in busy)]
    assert len(during) >= 3, (len(during), busy)  # 80 on a quiet machine; 9 under a full load
    assert window.viewer is not None and window.viewer.volume.shape == (64, 128, 128)


def test_push_to_talk_key_holds_recording(qtbot, window):
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtWidgets import QApplication

    window.activateWindow()
    window.studies.list.setFocus()  # wherever the focus is, the key reaches the dictation panel
    target = window.windowHandle()  # where the platform delivers keys, before the focus widget
    QApplication.sendEvent(target, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_F4, Qt.KeyboardModifier.NoModifier))
    assert window.dictation.kind == "dictation"
    QApplication.sendEvent(target, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_F4, Qt.KeyboardModifier.NoModifier,
                                             "", True))  # auto-repeat while held: ignored
    assert window.dictation.kind == "dictation"
    QApplication.sendEvent(target, QKeyEvent(QEvent.Type.KeyRelease, Qt.Key.Key_F4, Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: window.dictation.kind is None, timeout=2000)


def test_x_key_auto_repeat_pairs_do_not_cut_a_held_dictation(qtbot, window):
    """X delivers auto-repeat as release + press pairs that Qt does not mark as auto-repeat (660 ms after
    the press, then 25 a second). A 3 s hold must give one recording of about 3 s, not dozens of
    fragments ("Too short, ignored") that replace the last good dictation check."""
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtWidgets import QApplication

    window.dictation.source_factory = lambda: FileSource(sample_studies()[0].parent / "dictation.wav", realtime=True)
    window.activateWindow()
    window.studies.list.setFocus()
    target = window.windowHandle()  # where the platform delivers keys
    f4 = Qt.Key.Key_F4

    def key(kind):
        QApplication.sendEvent(target, QKeyEvent(kind, f4, Qt.KeyboardModifier.NoModifier))

    finished = []
    window.dictation.dictationFinished.connect(lambda *a: finished.append(a))
    started = time.perf_counter()
    key(QEvent.Type.KeyPress)
    qtbot.wait(660)
    while time.perf_counter() - started < 3.0:
        key(QEvent.Type.KeyRelease)  # the pair X sends for each repeat, neither marked as auto-repeat
        key(QEvent.Type.KeyPress)
        assert window.dictation.kind == "dictation"
        qtbot.wait(40)
    key(QEvent.Type.KeyRelease)
    qtbot.waitUntil(lambda: window.dictation.kind is None, timeout=2000)
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    qtbot.wait(300)
    assert len(finished) == 1 and "Too short" not in window.dictation.state_label.text()
    assert 2.7 * 16_000 < len(finished[0][1]) < 3.8 * 16_000
    assert len(list((window.settings.recordings()).glob("*.wav"))) == 1  # one WAV, not one per repeat


def test_silence_is_not_a_dictation_and_the_previous_check_stays(qtbot, window, tmp_path):
    import soundfile as sf

    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(3 * 16_000, np.float32), 16_000)
    window.dictation.source_factory = lambda: FileSource(silent)
    shown = []
    window.dictationShown.connect(shown.append)
    window.findings.show_results([], title="previous check: ")
    before = window.findings.header.text()
    assert window.dictation.begin()
    qtbot.waitUntil(window.dictation.recorder.source.finished.is_set, timeout=10_000)
    window.dictation.end()
    qtbot.wait(300)
    assert not shown and window.findings.header.text() == before
    assert "No speech heard" in window.dictation.state_label.text()
    assert "No speech heard" in window.activity.text()


@pytest.mark.slow  # loads the Whisper backbone (~40 s on this shared CPU)
def test_dictation_from_a_file_gives_results_and_similar_opens_beside(qtbot, window, tmp_path):
    samples = sample_studies()
    with qtbot.waitSignal(window.libraryIndexed, timeout=TIMEOUT_MS):
        window.index_studies(samples[1:])
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        window.open_study(str(samples[0]))
    assert window.dictation.begin()
    source = window.dictation.recorder.source
    qtbot.waitUntil(source.finished.is_set, timeout=30_000)
    with qtbot.waitSignal(window.dictationShown, timeout=TIMEOUT_MS) as blocker:
        window.dictation.end()
    result = blocker.args[0]
    a = result.analysis
    assert len(a.dictation) == 18 and a.discrepancies is not None
    assert {h["uid"] for h in a.similar} and len(a.similar) == len(samples) - 1
    # the recording on disk is the file that was fed
    import soundfile as sf

    data, sr = sf.read(result.audio_path, dtype="float32")
    assert sr == 16_000 and abs(len(data) - len(source.waveform)) == 0
    assert np.max(np.abs(data - source.waveform)) < 1e-3  # 16-bit PCM rounding only
    # discrepancies highlighted in the table, similar studies listed
    assert window.findings.highlighted_labels() == [d.label for d in a.discrepancies]
    assert window.similar.list.count() == len(a.similar)
    window.similar._activated(window.similar.list.item(0))
    qtbot.waitUntil(lambda: window.compare is not None, timeout=60_000)
    assert window.compare.volume.metadata["source"] == a.similar[0]["study"]["path"]
