"""Reading tools on the slice views: HU under the mouse, a ruler in mm, an elliptical ROI's mean/SD
HU, slice position and thickness, the study corner (no patient identifiers), the 3D orientation
cube, and a prior linked by scrolling with a manual offset. Values are checked against the voxels
themselves, not against the code's own arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt

from desktop.viewer.fourup import StudyViewer
from desktop.viewer.link import ScrollLink
from desktop.viewer.measure import ellipse_stats


@pytest.fixture
def viewer(qtbot, sample_volume):
    w = StudyViewer(sample_volume, with_3d=True, role="Current")
    qtbot.addWidget(w)
    w.resize(800, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close_views()


def voxel_of(volume, point) -> tuple[int, int, int]:
    i, j, k = np.rint(np.linalg.solve(volume.affine_lps(), np.r_[point, 1.0])[:3]).astype(int)
    return k, j, i


def test_hu_under_the_mouse(qtbot, viewer, sample_volume):
    from PySide6.QtGui import QMouseEvent

    ax = viewer.views["axial"]
    pos = QPointF(ax.width() * 0.43 + 0.3, ax.height() * 0.31 + 0.3)  # not on a voxel boundary
    ev = QMouseEvent(QMouseEvent.Type.MouseMove, pos, ax.mapToGlobal(pos), Qt.MouseButton.NoButton,
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    ax.mouseMoveEvent(ev)
    point, hu = viewer.state.hover["axial"]
    assert hu == float(sample_volume.array[voxel_of(sample_volume, point)])
    ax.render_now()
    assert f"{hu:.0f} HU" in ax.overlay.corner_text(1)


def test_ruler_measures_millimetres(qtbot, viewer):
    ax, st = viewer.views["axial"], viewer.state
    qtbot.keyClick(ax, Qt.Key.Key_M)
    assert st.tool == "ruler"
    a, b = QPoint(200, 200), QPoint(300, 200)
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(ax, b)
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=b)
    (m,) = st.measurements
    assert m.length_mm == pytest.approx(100 / ax.pixels_per_mm(), rel=0.02)  # 100 pixels at the view's scale
    assert st.window == 1500.0  # the drag measured; it did not change the window
    ax.render_now()
    assert ax.overlay.labels == [f"{m.length_mm:.1f} mm"]
    qtbot.keyClick(ax, Qt.Key.Key_Up)  # another slice: the measurement belongs to its own slice
    ax.render_now()
    assert ax.overlay.labels == []
    qtbot.keyClick(ax, Qt.Key.Key_Down)
    qtbot.keyClick(ax, Qt.Key.Key_Delete)
    assert st.measurements == []


def test_ellipse_roi_mean_and_sd_of_the_voxels_inside(qtbot, viewer, sample_volume):
    ax, st = viewer.views["axial"], viewer.state
    qtbot.keyClick(ax, Qt.Key.Key_E)
    a, b = QPoint(330, 150), QPoint(420, 210)
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(ax, b)
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=b)
    (m,) = st.measurements
    # independently: every voxel of this slice whose centre is inside the ellipse
    k = st.slice_index("axial")
    nz, ny, nx = sample_volume.shape
    jj, ii = np.mgrid[0:ny, 0:nx]
    world = (sample_volume.affine_lps() @ np.c_[ii.ravel(), jj.ravel(), np.full(ii.size, k), np.ones(ii.size)].T)[:3].T
    centre, ra, rb = m.ellipse_axes()
    u, v = (world - centre) @ m.right, (world - centre) @ m.up
    inside = (u / ra) ** 2 + (v / rb) ** 2 <= 1.0
    hu = sample_volume.array[k].ravel()[inside].astype(float)
    assert m.stats["n"] == pytest.approx(inside.sum(), rel=0.05)
    assert m.stats["mean"] == pytest.approx(hu.mean(), abs=max(5.0, 0.05 * abs(hu.mean())))
    assert m.stats["sd"] == pytest.approx(hu.std(ddof=1), rel=0.1, abs=5.0)
    ax.render_now()
    assert ax.overlay.labels[0].startswith(f"mean {m.stats['mean']:.0f} HU  SD {m.stats['sd']:.0f}")


def test_ellipse_stats_on_a_known_volume(sample_volume):
    from desktop.viewer.measure import Measurement

    vol = dataclasses.replace(sample_volume, array=np.zeros_like(sample_volume.array))
    vol.array[:, :, : vol.shape[2] // 2] = 100  # patient's right half (low column index) 100 HU, left half 0
    centre = vol.affine_lps() @ np.r_[vol.shape[2] / 2, vol.shape[1] / 2, vol.shape[0] // 2, 1.0]
    right, up = np.array([1.0, 0, 0]), np.array([0, -1.0, 0])
    m = Measurement("ellipse", "axial", float(centre[2]), centre[:3] - 20 * right - 10 * up,
                    centre[:3] - 5 * right + 10 * up, right, up)
    s = ellipse_stats(vol, m)  # entirely on the patient's right (negative x): all 100 HU
    assert s["mean"] == 100.0 and s["sd"] == 0.0 and s["n"] > 10


def test_corners_position_thickness_and_study_without_identifiers(qtbot, viewer, sample_volume):
    ax = viewer.views["axial"]
    ax.render_now()
    upper_left = ax.overlay.corner_text(2)
    z = viewer.state.cursor[2]
    assert f"{'S' if z >= 0 else 'I'} {abs(z):.1f} mm" in upper_left
    thick = sample_volume.metadata.get("slice_thickness") or sample_volume.spacing[0]
    assert f"thk {thick:.1f} mm" in upper_left
    study = ax.overlay.corner_text(3)
    assert sample_volume.metadata["series_description"] in study and "CT" in study
    assert viewer.title.text().startswith("Current: ")
    # the text sits on a translucent dark box with a shadow: legible over bone
    tp = ax.overlay.corners.GetTextProperty()
    assert tp.GetShadow() and tp.GetBackgroundOpacity() >= 0.5


def test_3d_orientation_cube_turns_with_the_camera(qtbot, viewer):
    v3 = viewer.views["3d"]
    v3.render_now()
    dop = np.array(v3.renderer.GetActiveCamera().GetDirectionOfProjection())
    mdop = np.array(v3.marker.GetActiveCamera().GetDirectionOfProjection())
    assert np.allclose(dop, mdop, atol=1e-6)
    v3.on_drag(Qt.MouseButton.LeftButton, 60, 0, Qt.KeyboardModifier.NoModifier)
    v3.render_now()
    assert np.allclose(v3.renderer.GetActiveCamera().GetDirectionOfProjection(),
                       v3.marker.GetActiveCamera().GetDirectionOfProjection(), atol=1e-6)
    assert not np.allclose(dop, v3.marker.GetActiveCamera().GetDirectionOfProjection(), atol=1e-3)


def test_linked_scrolling_with_a_manual_offset(qtbot, sample_volume):
    from desktop.viewer.geometry import Geometry
    from desktop.viewer.state import ViewerState

    shifted = dataclasses.replace(sample_volume, origin=tuple(np.array(sample_volume.origin) + [0, 0, 30.0]))
    current, prior = ViewerState(Geometry.of(sample_volume)), ViewerState(Geometry.of(shifted))
    link = ScrollLink(current, prior)
    start, base = prior.slice_index("axial"), link.slice_offset  # centres aligned: 30 mm apart
    assert base == round(30.0 / prior.geometry.step[2])
    current.scroll("axial", 3)
    assert prior.slice_index("axial") == start + 3  # same spacing: slice for slice
    prior.scroll("axial", -2)  # the reader lines the prior up by hand
    assert link.slice_offset == base - 2
    current.scroll("axial", 1)
    assert prior.slice_index("axial") == start + 3 - 2 + 1  # the offset is kept
    link.set_enabled(False)
    current.scroll("axial", 5)
    assert prior.slice_index("axial") == start + 2  # unlinked: the prior stays
