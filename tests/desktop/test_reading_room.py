"""The main window as a reader meets it: a new study never shows the previous one's findings, the
status line never claims work that has finished, the findings time counts from the open request,
a study opened from the dialog or added to the library shows in the list at once, no microphone is
said in words, W/L is kept per series, the findings fit at 1600 × 1000, F1 lists the shortcuts and
the window is dark. (Tiny bundle; the real bundle runs in the Xvfb session test.)"""

from __future__ import annotations

import shutil
import time

import pytest

from desktop.dictation.sources import FileSource
from desktop.main_window import MainWindow
from desktop.panels.studies import sample_studies
from desktop.settings import Settings
from tests.engine.tiny_bundle import tiny_bundle_path

TIMEOUT_MS = 240_000


@pytest.fixture
def window(qtbot, tmp_path):
    wav = sample_studies()[0].parent / "dictation.wav"
    settings = Settings(bundle=str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                        recordings_dir=str(tmp_path / "rec"))
    w = MainWindow(settings, source_factory=lambda: FileSource(wav), cache_dir=False, save_settings=False)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    yield w
    w.close()


def settle(qtbot, window):
    """Until no engine work runs (the status line then shows the last outcome)."""
    qtbot.waitUntil(lambda: window.engine_info is not None and not window.runner.busy, timeout=TIMEOUT_MS)
    qtbot.wait(50)


def test_another_study_never_shows_the_previous_findings(qtbot, window):
    a, b = sample_studies()[:2]
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        window.open_study(str(a))
    views = dict(window.viewer.views)
    window.open_study(str(b))
    # at once, before B is even read: nothing of A's findings stands for B
    assert window.findings.table.rowCount() == 0 and window.analysis is None
    assert window.similar.list.count() == 0
    assert "Reading" in window.findings.header.text()
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        pass
    assert window.findings.table.rowCount() == 18
    assert window.viewer.volume.metadata["source"].startswith(str(b))
    # the same views show B (no second set of GL windows painting into the grid)
    assert all(window.viewer.views[n] is v for n, v in views.items())
    assert all(v.volume is window.viewer.volume for n, v in views.items() if n != "3d")


def test_the_status_line_never_claims_finished_work(qtbot, window, tmp_path):
    settle(qtbot, window)
    assert not window.activity.text().endswith("…"), window.activity.text()
    window.open_study(str(tmp_path / "no such study"))
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT_MS):
        pass
    settle(qtbot, window)
    assert window.activity.text().startswith("⚠") and "no such study" in window.activity.text()
    assert window.busy_bar.isHidden()


def test_findings_time_counts_from_the_open_request(qtbot, window):
    settle(qtbot, window)
    shown = []
    window.findingsShown.connect(lambda _a: shown.append(time.perf_counter()))
    started = time.perf_counter()
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        window.open_study(str(sample_studies()[0]))
    elapsed = shown[0] - started
    settle(qtbot, window)
    text = window.activity.text()
    assert text.startswith("Findings ready") and "after opening" in text, text
    said = float(text.split("Findings ready ")[1].split(" s after")[0])
    assert said >= elapsed - 0.1  # what the reader waited, not only the encoder's share


def test_opened_from_the_dialog_and_added_to_the_library_shows_at_once(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QFileDialog

    folder = tmp_path / "incoming" / "ct"
    shutil.copytree(sample_studies()[1], folder)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    settle(qtbot, window)
    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        window.studies.choose_folder()

    def entries():
        return [window.studies.list.item(i) for i in range(window.studies.list.count())
                if window.studies.list.item(i).data(Qt.ItemDataRole.UserRole)[0] == str(folder)]

    assert len(entries()) == 1
    with qtbot.waitSignal(window.libraryIndexed, timeout=TIMEOUT_MS):
        window.add_to_library()
    qtbot.waitUntil(lambda: any(e.text().startswith("[library]") for e in entries()), timeout=TIMEOUT_MS)
    settle(qtbot, window)
    assert window.activity.text().startswith("Added to the library")
    assert window.library_label.text() == "library: 1 studies"


def test_no_microphone_is_said_in_words(qtbot, window, monkeypatch):
    import sounddevice as sd

    from desktop.dictation import sources

    def no_device(*a, **k):
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sources, "input_devices", lambda: [])
    monkeypatch.setattr(sd, "InputStream", no_device)
    window.dictation.source_factory = window._microphone
    with qtbot.waitSignal(window.dictation.message, timeout=5000) as blocker:
        assert not window.dictation.begin()
    text = blocker.args[0]
    assert "no microphone found" in text.lower() and "-1" not in text and "Settings" in text


def test_window_level_is_kept_per_series(qtbot, window):
    from desktop.viewer.presets import BONE, LUNG

    a, b = sample_studies()[:2]
    with qtbot.waitSignal(window.studyOpened, timeout=TIMEOUT_MS):
        window.open_study(str(a))
    window.viewer.state.apply_preset(BONE)
    with qtbot.waitSignal(window.studyOpened, timeout=TIMEOUT_MS):
        window.open_study(str(b))
    assert (window.viewer.state.window, window.viewer.state.level) == (LUNG.window, LUNG.level)
    with qtbot.waitSignal(window.studyOpened, timeout=TIMEOUT_MS):
        window.open_study(str(a))
    st = window.viewer.state
    assert (st.window, st.level, st.preset_name) == (BONE.window, BONE.level, "Bone")
    settle(qtbot, window)


def test_all_findings_fit_without_scrolling_and_the_window_is_dark(qtbot, window):
    from desktop.theme import is_dark

    with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
        window.open_study(str(sample_studies()[0]))
    qtbot.wait(100)
    assert window.findings.table.rowCount() == 18
    assert window.findings.fits_without_scrolling()
    assert is_dark(window.palette()) and is_dark(window.findings.table.palette())
    settle(qtbot, window)


def test_f1_lists_the_shortcuts(qtbot, window):
    from PySide6.QtCore import Qt

    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_F1)
    qtbot.waitUntil(lambda: getattr(window, "_shortcuts", None) is not None and window._shortcuts.isVisible(),
                    timeout=5000)
    texts = {window._shortcuts.table.item(r, 1).text() for r in range(window._shortcuts.table.rowCount())}
    assert {"m", "e", "F4 (hold)", "1 / 2 / 3"} <= texts
    window._shortcuts.close()
    settle(qtbot, window)


def test_the_transcript_comes_after_the_results_as_an_editable_draft(qtbot, window):
    """What was heard: made in its own thread once the dictation's results are shown, editable,
    saved under the user data folder; the panel says which reader decided the check."""
    import numpy as np

    from desktop.engine_service import DictationResult
    from engine.audio import load_audio

    pytest.importorskip("faster_whisper")
    wav_path = sample_studies()[0].parent / "dictation.wav"
    wave = load_audio(wav_path)[: 6 * 16_000]  # "No pericardial effusion. Calcified atherosclerotic plaques…"

    class Analysis:  # what _dictation_ready reads of an engine Analysis
        findings, dictation, discrepancies, unchecked, similar, timings = [], None, None, [], None, {"total": 1.0}
        transcript = None  # the speech reader decided: the app transcribes

    order = []
    window.dictationShown.connect(lambda r: order.append("results"))
    window.transcriptShown.connect(lambda t: order.append("transcript"))
    with qtbot.waitSignal(window.transcriptShown, timeout=TIMEOUT_MS) as blocker:
        window._dictation_ready(DictationResult(Analysis(), str(wav_path), wave))
        assert order == ["results"] and "Transcribing" in window.transcript.header.text()
    assert order == ["results", "transcript"]
    text = blocker.args[0].lower()
    assert "pericardial effusion" in text, text
    assert "speech reader" in window.transcript.note.text()
    window.transcript.text.setPlainText("No pericardial effusion. Edited by the reader.")
    path = window.transcript.save()
    assert path.parent == window.settings.transcripts() and path.stem == wav_path.stem
    assert path.read_text(encoding="utf-8").startswith("No pericardial effusion. Edited")
    assert np.isfinite(wave).all()


def test_the_transcript_panel_names_the_deciding_reader_and_the_disagreements(qtbot, tmp_path):
    from desktop.panels.transcript import TranscriptPanel

    panel = TranscriptPanel(tmp_path)
    qtbot.addWidget(panel)
    panel.show_text("no pleural effusion", 1.0, "speech", [("Pleural effusion", "absent", "present")])
    note = panel.note.text()
    assert "speech reader" in note and "Pleural effusion: transcript absent, check present" in note
    panel.show_text("no pleural effusion", 1.0, "cascade", [])
    assert "transcript reader" in panel.note.text() and "differ" not in panel.note.text()
