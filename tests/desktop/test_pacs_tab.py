"""The study browser's PACS tab against a real Orthanc (the department tests' fixture): search shows the
stored studies (over DICOMweb and DIMSE, filtered by date and description, no credential on screen), Open
retrieves a study into the PACS cache and the window loads it, Cancel stops a retrieval (and Open resumes
it), "Send results to PACS" stores the SR and Orthanc lists it; errors are one line.

``SPEECHCT_UPDATE_SCREENSHOTS=1`` runs the last test on the default bundle and writes its screenshot to
docs/screenshots/pacs-tab.png.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QComboBox, QLabel, QLineEdit, QTreeWidget, QWidget

from desktop.panels.pacs import PacsPanel
from desktop.settings import Settings
from tests.department.conftest import (  # noqa: F401  (the department tests' fixtures: Orthanc, no user settings)
    _isolated_settings,
    orthanc,
    orthanc_factory,
    write_pacs_settings,
)
from tests.department.orthanc import PASSWORD, free_port
from tests.engine.tiny_bundle import tiny_bundle_path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "assets" / "samples"
SCREENSHOT = REPO / "docs" / "screenshots" / "pacs-tab.png"
#: the sample studies as the PACS holds them: (date, description)
STORED = {"study-001": ("20240301", "CT CHEST WITH CONTRAST"), "study-002": ("20240615", "CT THORAX LOW DOSE"),
          "study-003": ("20231120", "CT CHEST")}
TIMEOUT_MS = 240_000


@pytest.fixture
def pacs(orthanc, tmp_path, monkeypatch):  # noqa: F811
    """Orthanc holding the three sample studies (dated, described); the PACS settings name it "web"
    (DICOMweb, basic auth, the password in the settings file) and "dimse" (C-FIND / C-GET), plus "down"
    (a port nobody listens on)."""
    uids = {}
    for name, (date, description) in STORED.items():
        files = []
        for f in sorted((SAMPLES / name / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.StudyDate, ds.StudyDescription = date, description
            out = tmp_path / "stored" / name / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(out)
            files.append(out)
        orthanc.upload(files)
        uids[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    down = {"dicomweb": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout": 5}
    monkeypatch.setenv("SPEECHCT_PACS_CONFIG", write_pacs_settings(tmp_path / "pacs.json", orthanc, down=down))
    return orthanc, uids


@pytest.fixture
def panel(qtbot):
    p = PacsPanel(Settings())
    qtbot.addWidget(p)
    p.resize(520, 600)
    p.show()  # the servers are read when the tab is first shown
    yield p
    p.shutdown()


def shown_text(root: QWidget) -> str:
    """Everything a user can read in ``root``: labels, fields, buttons, combo entries, table cells, tips."""
    parts = []
    for w in [root, *root.findChildren(QWidget)]:
        parts.append(w.toolTip())
        if isinstance(w, (QLabel, QLineEdit, QAbstractButton)):
            parts.append(w.text())
        elif isinstance(w, QComboBox):
            parts += [w.itemText(i) for i in range(w.count())]
        elif isinstance(w, QTreeWidget):
            for i in range(w.topLevelItemCount()):
                item = w.topLevelItem(i)
                parts += [item.text(c) for c in range(w.columnCount())] + [item.toolTip(0)]
    return "\n".join(parts)


def choose(panel: PacsPanel, name: str) -> None:
    panel.server.setCurrentIndex(panel.server.findData(name))


def search(qtbot, panel: PacsPanel, date: str = "", description: str = "") -> list:
    panel.date.setText(date)
    panel.description.setText(description)
    with qtbot.waitSignal(panel.searched, timeout=60_000) as blocker:
        qtbot.mouseClick(panel.search_button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def test_search_shows_the_stored_studies_over_both_protocols_and_no_credential(qtbot, pacs, panel):
    server, uids = pacs
    assert [panel.server.itemData(i) for i in range(panel.server.count())] == ["web", "dimse", "down"]  # default first
    assert panel.server.currentText() == f"web ({server.dicomweb_url})"
    for server in ("web", "dimse"):
        choose(panel, server)
        found = search(qtbot, panel)
        assert {s.study_uid for s in found} == set(uids.values()), server
        assert panel.study_uids() == [uids["study-002"], uids["study-001"], uids["study-003"]]  # newest first
        rows = [[panel.results.topLevelItem(i).text(c) for c in range(4)] for i in range(3)]
        assert rows[0] == ["2024-06-15", "CT THORAX LOW DOSE", "CT", "64"], rows
        assert panel.status.text() == f"3 studies on {server}"
        assert [s.study_uid for s in search(qtbot, panel, date="20240601-")] == [uids["study-002"]]
        assert [s.study_uid for s in search(qtbot, panel, description="CONTRAST")] == [uids["study-001"]]
        assert search(qtbot, panel, date="20200101-20201231") == [] and "No matching study" in panel.status.text()
    assert panel.settings.pacs_server == "dimse"  # the choice is kept in the app's settings
    assert PASSWORD not in shown_text(panel)


def test_errors_are_one_line_and_name_no_secret(qtbot, pacs, panel):
    messages = []
    panel.message.connect(messages.append)
    choose(panel, "down")
    with qtbot.waitSignal(panel.failed, timeout=60_000) as blocker:
        panel.search()
    msg = blocker.args[0]
    assert "\n" not in msg and "cannot connect" in msg and "127.0.0.1" in msg, msg
    assert panel.status.text() == f"⚠ {msg}"

    choose(panel, "web")
    panel.date.setText("2024-13")
    with qtbot.waitSignal(panel.failed, timeout=10_000) as blocker:
        panel.search()
    assert "date must be YYYYMMDD" in blocker.args[0] and "--" not in blocker.args[0], blocker.args[0]

    with qtbot.waitSignal(panel.failed, timeout=10_000) as blocker:
        panel.send_current()  # nothing open
    assert blocker.args[0] == "no results to send yet: open a study and wait for its findings"

    # a server whose password is refused: said as such, the password nowhere
    settings = json.loads(Path(os.environ["SPEECHCT_PACS_CONFIG"]).read_text())
    settings["servers"]["web"]["password"] = "wrong-" + PASSWORD
    Path(os.environ["SPEECHCT_PACS_CONFIG"]).write_text(json.dumps(settings))
    qtbot.mouseClick(panel.reload_button, Qt.MouseButton.LeftButton)  # read again
    assert panel.server.currentData() == "web"
    panel.date.setText("")
    with qtbot.waitSignal(panel.failed, timeout=60_000) as blocker:
        panel.search()
    assert "refused our credentials (HTTP 401)" in blocker.args[0] and "\n" not in blocker.args[0]
    assert PASSWORD not in " ".join(messages) + shown_text(panel)


def test_cancel_stops_a_retrieval_and_open_resumes_it(qtbot, pacs, panel, tmp_path, monkeypatch):
    from engine.pacs.cache import Partial

    server, uids = pacs
    write, slow = Partial.write, {"on": True}

    def slow_write(self, ds):  # a slow network: 64 images take 3 s or more, time to press Cancel
        if slow["on"]:
            time.sleep(0.05)
        return write(self, ds)

    monkeypatch.setattr(Partial, "write", slow_write)
    search(qtbot, panel)
    opened = []
    panel.openRequested.connect(lambda folder, series: opened.append(folder))
    panel.results.setCurrentItem(panel.results.topLevelItem(1))  # study-001
    qtbot.mouseClick(panel.open_button, Qt.MouseButton.LeftButton)
    assert panel.retrieving and not panel.open_button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=60_000)
    assert panel.progress.maximum() == 64 and panel.progress.isVisible()
    with qtbot.waitSignal(panel.failed, timeout=60_000) as blocker:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0] == "cancelled"
    assert panel.status.text() == "Retrieval cancelled: what arrived is kept, and Open resumes it"
    assert not panel.retrieving and not panel.progress.isVisible() and not opened
    cache = tmp_path / "pacs-cache"
    assert not (cache / "studies" / uids["study-001"]).exists()  # nothing half-retrieved is visible
    kept = len(list((cache / ".partial" / uids["study-001"]).rglob("*.dcm")))
    assert 2 <= kept < 64, kept

    slow["on"] = False
    with qtbot.waitSignal(panel.openRequested, timeout=60_000) as blocker:
        panel.open_selected()
    folder = Path(blocker.args[0])
    assert folder == cache / "studies" / uids["study-001"]
    assert len(list(folder.rglob("*.dcm"))) == 64
    assert f"{64 - kept} images retrieved, {kept} resumed" in panel.status.text()


def test_open_loads_the_study_and_send_stores_its_sr(qtbot, pacs, tmp_path):
    from desktop.main_window import MainWindow

    server, uids = pacs
    update_screenshot = os.environ.get("SPEECHCT_UPDATE_SCREENSHOTS") == "1"  # then with the default bundle
    settings = Settings(bundle="" if update_screenshot else str(tiny_bundle_path()), library=str(tmp_path / "lib"),
                        recordings_dir=str(tmp_path / "rec"))
    window = MainWindow(settings, cache_dir=False, save_settings=False)
    qtbot.addWidget(window)
    window.resize(1600, 1000)
    window.show()
    try:
        window.browser.setCurrentWidget(window.pacs)
        window.resizeDocks([window.browser.parentWidget()], [460], Qt.Orientation.Horizontal)
        panel = window.pacs
        search(qtbot, panel)
        panel.results.setCurrentItem(panel.results.topLevelItem(0))  # study-002
        with qtbot.waitSignal(window.findingsShown, timeout=TIMEOUT_MS):
            qtbot.mouseClick(panel.open_button, Qt.MouseButton.LeftButton)
        cached = tmp_path / "pacs-cache" / "studies" / uids["study-002"]
        assert window.volume.metadata["source"] == str(cached)
        assert window.volume.metadata["study_uid"] == uids["study-002"] and window.volume.shape == (64, 128, 128)
        assert window.viewer is not None and window.viewer.volume is window.volume

        panel.with_dictation.setChecked(True)  # no dictation made: said, nothing sent
        with qtbot.waitSignal(panel.failed, timeout=10_000) as blocker:
            panel.send_current()
        assert "no dictation check to send" in blocker.args[0]
        panel.with_dictation.setChecked(False)
        before = server.sop_uids(uids["study-002"])
        with qtbot.waitSignal(panel.sent, timeout=TIMEOUT_MS) as blocker:
            qtbot.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
        sr_uid = blocker.args[0]
        assert server.sop_uids(uids["study-002"]) == before | {sr_uid}
        series = server.rest("POST", "/tools/find", json={"Level": "Series", "Expand": True, "Query": {
            "StudyInstanceUID": uids["study-002"], "Modality": "SR"}}).json()
        assert [s["MainDicomTags"]["SeriesDescription"] for s in series] == ["SpeechCT AI findings (unverified)"]
        assert panel.status.text() == "Findings sent to web as a DICOM SR (unverified AI output)"
        assert window.activity.text() == panel.status.text()
        choose(panel, "dimse")  # the same over DIMSE: C-STORE
        with qtbot.waitSignal(panel.sent, timeout=TIMEOUT_MS) as blocker:
            file_menu = window.menuBar().actions()[0].menu()
            next(a for a in file_menu.actions() if a.text() == "Send results to &PACS").trigger()
        assert server.sop_uids(uids["study-002"]) == before | {sr_uid, blocker.args[0]}
        choose(panel, "web")
        assert PASSWORD not in shown_text(window)

        shot = tmp_path / "pacs-tab.png"
        assert window.screenshot().save(str(shot))
        assert shot.stat().st_size > 50_000
        if update_screenshot:
            shutil.copyfile(shot, SCREENSHOT)
    finally:
        window.close()


def test_without_pacs_settings_the_tab_says_where_they_go(qtbot, panel, tmp_path):
    assert panel.server.count() == 0 and not panel.search_button.isEnabled() and not panel.send_button.isEnabled()
    assert panel.status.text() == (f"No PACS configured: list the servers in {tmp_path / 'no-pacs-settings.json'} "
                                   "(README: Department set-up)")
    with qtbot.waitSignal(panel.failed, timeout=10_000) as blocker:
        panel.send_current()
    assert blocker.args[0] == "no usable PACS server chosen (PACS tab)"
