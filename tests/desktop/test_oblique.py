"""An oblique series (rotated 30° about the patient's z axis, tilted 10° about x) is cut along
patient axes: a bright ball at a known LPS point shows up where the views say that point is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from desktop.viewer.fourup import StudyViewer
from engine.volume import Volume

BALL_LPS = np.array([20.0, -10.0, 15.0])


def oblique_volume() -> Volume:
    direction = Rotation.from_euler("zx", [30, 10], degrees=True).as_matrix()
    spacing = (2.0, 1.5, 1.5)  # z, y, x mm
    shape = (40, 64, 64)
    origin = -direction @ (np.array([shape[2] * spacing[2], shape[1] * spacing[1], shape[0] * spacing[0]]) / 2)
    vol = Volume(np.full(shape, -1000, np.int16), spacing, tuple(origin), direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    pts = np.stack([i * spacing[2], j * spacing[1], k * spacing[0]], -1) @ direction.T + origin
    vol.array[np.linalg.norm(pts - BALL_LPS, axis=-1) < 6.0] = 1000
    return vol


@pytest.mark.parametrize("view_name", ["axial", "coronal", "sagittal"])
def test_ball_appears_at_its_patient_position(qtbot, view_name):
    vol = oblique_volume()
    assert vol.is_oblique()
    w = StudyViewer(vol, with_3d=False)
    qtbot.addWidget(w)
    w.resize(500, 500)
    w.show()
    qtbot.waitExposed(w)
    try:
        w.state.set_cursor(BALL_LPS)
        w.state.set_window_level(400, 0)
        view = w.views[view_name]
        grey = view.snapshot().astype(float).mean(axis=2)
        # ignore overlay text and crosshair colours: the ball is the one large white blob
        ys, xs = np.nonzero(grey > 240)
        assert len(ys) > 30
        cy, cx = np.median(ys), np.median(xs)
        seen = view.world_at(cx, cy)
        assert np.linalg.norm(seen - BALL_LPS) < 3.0, (seen, BALL_LPS)
    finally:
        w.close_views()
