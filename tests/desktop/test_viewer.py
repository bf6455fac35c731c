"""Viewer gestures change slice, window/level and zoom as docs/design.md §5 says; screenshots show
the anatomy where it belongs (lung preset: lungs dark, body wall bright)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent

from desktop.viewer.fourup import StudyViewer
from desktop.viewer.presets import BONE, LUNG, MEDIASTINUM


@pytest.fixture
def viewer(qtbot, sample_volume):
    w = StudyViewer(sample_volume, with_3d=False)
    qtbot.addWidget(w)
    w.resize(600, 600)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close_views()


def wheel(widget, notches: int, modifiers=Qt.KeyboardModifier.NoModifier):
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    ev = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(), QPoint(0, 120 * notches), Qt.MouseButton.NoButton,
                     modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    widget.wheelEvent(ev)


def test_keys_scroll_slices(qtbot, viewer):
    ax, st = viewer.views["axial"], viewer.state
    n = st.n_slices("axial")
    assert n == 64 and st.n_slices("coronal") == 128
    start = st.slice_index("axial")
    qtbot.keyClick(ax, Qt.Key.Key_Up)
    assert st.slice_index("axial") == start + 1
    qtbot.keyClick(ax, Qt.Key.Key_Down)
    qtbot.keyClick(ax, Qt.Key.Key_Down)
    assert st.slice_index("axial") == start - 1
    qtbot.keyClick(ax, Qt.Key.Key_Up, Qt.KeyboardModifier.ShiftModifier)
    assert st.slice_index("axial") == start + 9
    qtbot.keyClick(ax, Qt.Key.Key_Home)
    assert st.slice_index("axial") == 0
    qtbot.keyClick(ax, Qt.Key.Key_Down)  # clamped at the first slice
    assert st.slice_index("axial") == 0
    qtbot.keyClick(ax, Qt.Key.Key_End)
    assert st.slice_index("axial") == n - 1
    # the crosshair is linked: the axial slice position is where the coronal view's line sits
    assert st.cursor[2] == pytest.approx(st.geometry.bounds_max[2])


def test_wheel_scrolls_and_ctrl_wheel_zooms(viewer):
    cor, st = viewer.views["coronal"], viewer.state
    start = st.slice_index("coronal")
    wheel(cor, 2)
    assert st.slice_index("coronal") == start + 2
    wheel(cor, -1, Qt.KeyboardModifier.ShiftModifier)
    assert st.slice_index("coronal") == start - 8
    wheel(cor, 1, Qt.KeyboardModifier.ControlModifier)
    assert st.zoom["coronal"] == pytest.approx(1.1)
    assert st.zoom["axial"] == 1.0


def test_presets_and_left_drag_window_level(qtbot, viewer):
    ax, st = viewer.views["axial"], viewer.state
    for key, preset in (("2", MEDIASTINUM), ("3", BONE), ("1", LUNG)):
        qtbot.keyClicks(ax, key)
        assert (st.window, st.level) == (preset.window, preset.level)
    centre = QPoint(300 // 2, 300 // 2)
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseMove(ax, centre + QPoint(40, 0))
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=centre + QPoint(40, 0))
    assert st.window > LUNG.window and st.level == LUNG.level  # horizontal: window only
    w = st.window
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseMove(ax, centre + QPoint(0, -30))
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=centre + QPoint(0, -30))
    assert st.window == w and st.level > LUNG.level  # up raises the level


def test_right_drag_zoom_middle_pan_and_reset(qtbot, viewer):
    sag, st = viewer.views["sagittal"], viewer.state
    p = QPoint(100, 150)
    qtbot.mousePress(sag, Qt.MouseButton.RightButton, pos=p)
    qtbot.mouseMove(sag, p + QPoint(0, -50))
    qtbot.mouseRelease(sag, Qt.MouseButton.RightButton, pos=p + QPoint(0, -50))
    assert st.zoom["sagittal"] == pytest.approx(np.exp(0.5), rel=1e-6)
    qtbot.mousePress(sag, Qt.MouseButton.MiddleButton, pos=p)
    qtbot.mouseMove(sag, p + QPoint(20, 0))
    qtbot.mouseRelease(sag, Qt.MouseButton.MiddleButton, pos=p + QPoint(20, 0))
    assert st.pan["sagittal"][0] > 0 and st.pan["sagittal"][1] == 0
    qtbot.keyClicks(sag, "3")
    qtbot.keyClick(sag, Qt.Key.Key_Up)
    qtbot.keyClick(sag, Qt.Key.Key_R)
    assert st.zoom["sagittal"] == 1.0 and not st.pan["sagittal"].any()
    assert (st.window, st.level) == (LUNG.window, LUNG.level)
    assert np.allclose(st.cursor, st.geometry.centre)


def test_click_moves_linked_crosshair(qtbot, viewer):
    ax, st = viewer.views["axial"], viewer.state
    before = st.slice_index("sagittal"), st.slice_index("coronal")
    # a click left of centre on the axial view is the patient's right: sagittal index goes down
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=QPoint(ax.width() // 4, ax.height() // 2))
    assert st.slice_index("sagittal") < before[0] - 10
    assert abs(st.slice_index("coronal") - before[1]) <= 1


def test_double_click_maximises(qtbot, viewer):
    qtbot.mouseDClick(viewer.views["coronal"], Qt.MouseButton.LeftButton)
    assert viewer.maximised == "coronal"
    assert not viewer.views["axial"].isVisible() and viewer.views["coronal"].isVisible()
    qtbot.mouseDClick(viewer.views["coronal"], Qt.MouseButton.LeftButton)
    assert viewer.maximised is None and viewer.views["axial"].isVisible()


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(float).mean(axis=2)


def test_axial_screenshot_structure_lung_preset(viewer):
    """Mid-chest axial slice in the lung window: both lungs dark, body wall bright, patient's right
    lung on the screen's left, air outside the body black."""
    st = viewer.state
    st.apply_preset(LUNG)
    img = _grey(viewer.views["axial"].snapshot())
    h, w = img.shape
    # Where are the lungs? Dark (< 60) pixels inside the body, left and right of the midline.
    vol = viewer.volume
    k = st.slice_index("axial")
    hu = vol.array[k]
    lung_mask = hu < -500
    body = hu > -300
    assert lung_mask[:, : hu.shape[1] // 2].sum() > 200 and lung_mask[:, hu.shape[1] // 2:].sum() > 200
    # map voxel columns/rows to screen pixels through the view's own world_at
    view = viewer.views["axial"]
    samples = {"lung": [], "body": [], "air": []}
    for y in range(h // 8, h - h // 8, 12):
        for x in range(w // 8, w - w // 8, 12):
            p = view.world_at(x, y)
            ijk = np.linalg.solve(vol.affine_lps(), np.r_[p, 1.0])[:3]
            i, j = int(round(ijk[0])), int(round(ijk[1]))
            if 0 <= i < hu.shape[1] and 0 <= j < hu.shape[0]:
                rows = np.flatnonzero(body[:, i])
                outside = rows.size == 0 or j < rows[0] or j > rows[-1]
                if hu[j, i] < -950 and outside:
                    samples["air"].append(img[y, x])
                elif lung_mask[j, i]:
                    samples["lung"].append(img[y, x])
                elif body[j, i] and hu[j, i] > 0:
                    samples["body"].append(img[y, x])
    assert len(samples["lung"]) > 20 and len(samples["body"]) > 20
    # lung parenchyma (about -850 HU) maps to ~85/255 in the lung window, soft tissue to ~235
    assert np.median(samples["lung"]) < 120 and np.median(samples["body"]) > 180
    # air (-1000 HU) is ~60/255 in a 1500/-600 window: darker than lung, not black
    assert len(samples["air"]) > 5 and np.median(samples["air"]) < np.median(samples["lung"]) - 10
    # in the mediastinal window the lungs go black and the body wall stays bright
    st.apply_preset(MEDIASTINUM)
    img2 = _grey(view.snapshot())
    lung_px = [img2[y, x] for y in range(h // 8, h - h // 8, 12) for x in range(w // 8, w - w // 8, 12)
               if _voxel_is(view, vol, k, x, y, lung_mask)]
    assert len(lung_px) > 20 and np.median(lung_px) < 15
    # radiological left/right: the screen's left half holds voxels of the patient's right (low x = R in LPS)
    left_pt, right_pt = view.world_at(w * 0.25, h / 2), view.world_at(w * 0.75, h / 2)
    assert left_pt[0] < right_pt[0]


def _voxel_is(view, vol, k, x, y, mask) -> bool:
    ijk = np.linalg.solve(vol.affine_lps(), np.r_[view.world_at(x, y), 1.0])[:3]
    i, j = int(round(ijk[0])), int(round(ijk[1]))
    return 0 <= i < mask.shape[1] and 0 <= j < mask.shape[0] and bool(mask[j, i])


def test_coronal_screenshot_head_up(viewer):
    """Coronal: superior at the top of the screen; the lungs (dark) sit above the bright abdomen/liver."""
    view = viewer.views["coronal"]
    img = _grey(view.snapshot())
    h, w = img.shape
    top, bottom = view.world_at(w / 2, h * 0.2), view.world_at(w / 2, h * 0.8)
    assert top[2] > bottom[2]
    lung_band = img[int(h * 0.3):int(h * 0.45), int(w * 0.2):int(w * 0.35)]
    abdomen_band = img[int(h * 0.8):int(h * 0.88), int(w * 0.3):int(w * 0.7)]
    assert np.median(lung_band) < 110 and np.median(abdomen_band) > 170


def test_findings_panel_bars_and_highlights(qtbot):
    from desktop.panels.findings import DISCREPANCY_COLOUR, FindingsPanel, ProbabilityBar
    from engine.findings import DictationFinding, Discrepancy, FindingScore

    panel = FindingsPanel()
    qtbot.addWidget(panel)
    findings = [FindingScore("Emphysema", 0.9, 0.5, True), FindingScore("Cardiomegaly", 0.2, 0.7, False)]
    panel.show_results(findings)
    assert panel.table.rowCount() == 2 and isinstance(panel.table.cellWidget(0, 1), ProbabilityBar)
    dictation = [DictationFinding("Emphysema", "not mentioned", 0.9, {}), DictationFinding("Cardiomegaly", "absent", 0.9, {})]
    panel.show_results(findings, dictation, [Discrepancy("Emphysema", "omitted", 0.9, 0.5, 0.4, "not mentioned", 0.9)])
    assert panel.highlighted_labels() == ["Emphysema"]
    assert panel.table.item(0, 0).background().color() == DISCREPANCY_COLOUR
    assert panel.table.item(1, 0).background().color() != DISCREPANCY_COLOUR
    assert panel.table.item(0, 2).text() == "omitted in dictation" and panel.table.item(1, 2).text() == "dictated absent"
    bar = panel.table.cellWidget(1, 1)
    assert (bar.probability, bar.threshold, bar.positive) == (0.2, 0.7, False)
    assert "2 findings" in panel.header.text() and "1 discrepancies" in panel.header.text()


def test_findings_panel_greys_findings_the_image_model_cannot_check(qtbot):
    from desktop.panels.findings import UNCHECKED_COLOUR, FindingsPanel
    from engine.findings import DictationFinding, FindingScore

    panel = FindingsPanel()
    qtbot.addWidget(panel)
    findings = [FindingScore("Emphysema", 0.9, 0.5, True, 0.93), FindingScore("Hiatal hernia", 0.8, 0.5, True, 0.55)]
    dictation = [DictationFinding(f.label, "absent", 0.9, {}) for f in findings]
    panel.show_results(findings, dictation, [], unchecked=["Hiatal hernia"])
    assert panel.table.item(1, 0).foreground().color() == UNCHECKED_COLOUR
    assert "AUROC" in panel.table.item(1, 0).toolTip() and "0.55" in panel.table.item(1, 0).toolTip()
    assert panel.table.item(0, 0).foreground().color() != UNCHECKED_COLOUR
    assert "validation AUROC 0.93" in panel.table.cellWidget(0, 1).toolTip()
    assert panel.header.text() == "2 of 2 findings above threshold, 0 discrepancies; 1 not checked (weak image model)"
    # said in words, not only in grey, with what was dictated
    assert panel.table.item(1, 2).text() == "not checked · dictated absent"
    assert panel.table.item(0, 2).text() == "dictated absent"


def test_weak_findings_are_greyed_before_any_dictation(qtbot):
    """The radiologist sees which rankings to distrust as soon as the study opens, not only after dictating."""
    from desktop.panels.findings import UNCHECKED_COLOUR, FindingsPanel
    from engine.findings import FindingScore

    panel = FindingsPanel()
    qtbot.addWidget(panel)
    findings = [FindingScore("Emphysema", 0.9, 0.5, True, 0.93), FindingScore("Hiatal hernia", 0.8, 0.5, True, 0.55)]
    panel.show_results(findings, unchecked=["Hiatal hernia"])
    assert panel.table.item(1, 0).foreground().color() == UNCHECKED_COLOUR
    assert panel.table.item(0, 0).foreground().color() != UNCHECKED_COLOUR
    assert "weak" in panel.table.item(1, 0).toolTip()
    assert [panel.table.cellWidget(r, 1).weak for r in range(2)] == [False, True]  # its bar is muted too
    assert panel.header.text() == "2 of 2 findings above threshold; 1 not checked (weak image model)"
    assert panel.table.item(1, 2).text() == "not checked" and panel.table.item(0, 2).text() == ""


def test_a_hedged_mention_is_shown_as_uncertain_never_as_omitted(qtbot):
    from desktop.panels.findings import DISCREPANCY_COLOUR, FindingsPanel
    from engine.findings import DictationFinding, FindingScore

    panel = FindingsPanel()
    qtbot.addWidget(panel)
    findings = [FindingScore("Emphysema", 0.9, 0.5, True, 0.93), FindingScore("Lung nodule", 0.7, 0.5, True, 0.9)]
    dictation = [DictationFinding("Emphysema", "uncertain", 0.8, {}), DictationFinding("Lung nodule", "present", 0.9, {})]
    panel.show_results(findings, dictation, [])
    assert panel.table.item(0, 2).text() == "uncertain (hedged)"
    assert panel.table.item(0, 0).background().color() != DISCREPANCY_COLOUR
    assert "1 dictated as uncertain" in panel.header.text()


def test_probability_bars_follow_their_column_when_the_dictation_column_grows(qtbot):
    """The bars are cell widgets: once the Dictation column filled in, they kept the previous, wider layout
    and painted over the dictation text (seen in the app's screenshot)."""
    from desktop.panels.findings import FindingsPanel
    from engine.findings import DictationFinding, Discrepancy, FindingScore

    panel = FindingsPanel()
    qtbot.addWidget(panel)
    panel.resize(552, 540)
    panel.show()
    findings = [FindingScore(f"Finding {i}", 0.9 - 0.04 * i, 0.5, 0.9 - 0.04 * i > 0.5, 0.8) for i in range(18)]
    panel.show_results(findings)
    qtbot.wait(10)
    dictation = [DictationFinding(f.label, "not mentioned", 0.9, {}) for f in findings]
    omitted = Discrepancy(findings[0].label, "omitted", 0.9, 0.5, 0.4, "not mentioned", 0.9)
    panel.show_results(findings, dictation, [omitted], title="Dictation checked: ")
    table = panel.table
    assert table.columnWidth(2) > 66  # the column did grow
    for row in range(table.rowCount()):
        cell = table.visualRect(table.model().index(row, 1))
        assert table.cellWidget(row, 1).geometry() == cell
