"""engine.volume.Volume: construction rules, LPS affine, orientation codes, reoriented()."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.volume import Volume

SHAPE = (3, 4, 5)  # (z, y, x): all different, so a wrong permutation cannot hide
SPACING = (2.5, 0.8, 0.6)  # (sz, sy, sx)


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    if axis == "x":
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    raise ValueError(axis)


def _volume(direction=None, origin=(10.0, -20.0, 30.0)) -> Volume:
    arr = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    return Volume(arr, SPACING, origin, np.eye(3) if direction is None else direction)


def _all_codes() -> list[str]:
    codes = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            codes.append("".join(("LR", "PA", "SI")[a][s] for a, s in zip(perm, signs)))
    return codes


def _world(volume: Volume) -> np.ndarray:
    """LPS position of every voxel, (z, y, x, 3), by the module docstring's formula."""
    sz, sy, sx = volume.spacing
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    steps = np.stack([i * sx, j * sy, k * sz], axis=-1)
    return np.asarray(volume.origin) + steps @ volume.direction.T


# --------------------------------------------------------------------------- construction


def test_rejects_non_3d_and_unsafe_metadata():
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="SAFE_METADATA_KEYS"):
        Volume(np.zeros((2, 2, 2)), (1, 1, 1), metadata={"patient_name": "X"})


def test_normalises_spacing_origin_and_direction_types():
    v = Volume(np.zeros((2, 2, 2)), [1, 2, 3], [4, 5, 6], [1, 0, 0, 0, 1, 0, 0, 0, 1])
    assert v.spacing == (1.0, 2.0, 3.0) and all(isinstance(s, float) for s in v.spacing)
    assert v.origin == (4.0, 5.0, 6.0)
    assert v.direction.shape == (3, 3) and v.direction.dtype == np.float64
    assert v.shape == (2, 2, 2)


def test_affine_lps_matches_the_documented_formula():
    v = _volume(_rotation("z", 20) @ _rotation("x", 10))
    k, j, i = 2, 3, 4
    sz, sy, sx = SPACING
    expected = np.asarray(v.origin) + v.direction @ np.array([i * sx, j * sy, k * sz])
    np.testing.assert_allclose((v.affine_lps() @ [i, j, k, 1])[:3], expected)
    np.testing.assert_allclose(_world(v)[k, j, i], expected)


def test_hu_range():
    assert _volume().hu_range() == (0.0, float(np.prod(SHAPE) - 1))


# --------------------------------------------------------------------------- orientation codes


@pytest.mark.parametrize(
    "direction, code",
    [
        (np.eye(3), "LPS"),
        (np.diag([-1.0, -1.0, 1.0]), "RAS"),
        (np.diag([1.0, 1.0, -1.0]), "LPI"),
        # coronal slices: columns → L, rows → I (down the image), slices → A
        (np.array([[1.0, 0, 0], [0, 0, -1], [0, -1, 0]]), "LIA"),
        # sagittal slices: columns → P, rows → I, slices → L
        (np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]), "PIL"),
    ],
)
def test_orientation_code(direction, code):
    assert _volume(direction).orientation_code() == code


def test_oblique_takes_the_nearest_code_and_is_flagged():
    v = _volume(_rotation("z", 30))
    assert v.orientation_code() == "LPS"
    assert v.is_oblique()
    assert not _volume(_rotation("z", 0.5)).is_oblique(tol_deg=1.0)
    assert not _volume().is_oblique()


# --------------------------------------------------------------------------- reoriented


@pytest.mark.parametrize("code", _all_codes())
def test_reoriented_reaches_every_code_and_keeps_every_voxel_in_place(code):
    v = _volume()
    r = v.reoriented(code)
    assert r.orientation_code() == code
    assert sorted(r.shape) == sorted(v.shape)
    # Independent check: each voxel of r, mapped to LPS and back into v's index space,
    # lands on an integer index of v holding the same value.
    world = _world(r).reshape(-1, 3)
    sz, sy, sx = v.spacing
    ijk = np.linalg.solve(v.direction @ np.diag([sx, sy, sz]), (world - np.asarray(v.origin)).T).T
    idx = np.rint(ijk).astype(int)
    np.testing.assert_allclose(ijk, idx, atol=1e-9)
    np.testing.assert_array_equal(v.array[idx[:, 2], idx[:, 1], idx[:, 0]], r.array.reshape(-1))
    # Spacing travels with its axis.
    np.testing.assert_allclose(np.linalg.norm(r.affine_lps()[:3, :3], axis=0), np.array(r.spacing)[::-1])
    assert r.array.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("start", ["RAS", "LIA", "PIL", "SLA"])
@pytest.mark.parametrize("target", ["LPS", "RAS", "IRP"])
def test_reoriented_round_trip_is_identity(start, target):
    base = _volume().reoriented(start)
    back = base.reoriented(target).reoriented(start)
    np.testing.assert_array_equal(back.array, base.array)
    np.testing.assert_allclose(back.spacing, base.spacing)
    np.testing.assert_allclose(back.origin, base.origin, atol=1e-12)
    np.testing.assert_allclose(back.direction, base.direction, atol=1e-12)


def test_reoriented_same_code_returns_the_volume_and_is_case_insensitive():
    v = _volume()
    assert v.reoriented("lps") is v


def test_reoriented_oblique_reaches_the_nearest_code_without_resampling():
    v = _volume(_rotation("z", 25))
    r = v.reoriented("RAS")
    assert r.orientation_code() == "RAS"
    assert r.is_oblique()
    np.testing.assert_array_equal(np.sort(r.array, axis=None), np.sort(v.array, axis=None))
    world_v = _world(v).reshape(-1, 3)
    world_r = _world(r).reshape(-1, 3)
    # The set of voxel centres is unchanged (same points, different order).
    order_v = np.lexsort(np.round(world_v, 6).T)
    order_r = np.lexsort(np.round(world_r, 6).T)
    np.testing.assert_allclose(world_v[order_v], world_r[order_r], atol=1e-9)
    np.testing.assert_array_equal(v.array.reshape(-1)[order_v], r.array.reshape(-1)[order_r])


@pytest.mark.parametrize("bad", ["LP", "LPSX", "LPQ", "LLS", "PPS"])
def test_reoriented_rejects_bad_codes(bad):
    with pytest.raises(ValueError):
        _volume().reoriented(bad)


def test_reoriented_keeps_metadata_and_warnings():
    v = _volume()
    v.metadata["modality"] = "CT"
    v.warnings.append("gantry tilt")
    r = v.reoriented("RAS")
    assert r.metadata == {"modality": "CT"}
    assert r.warnings == ["gantry tilt"]


# --------------------------------------------------------------------------- known bugs (reported to the lead)


def test_replace_does_not_share_warnings_or_metadata():
    v = _volume()
    r = v.reoriented("RAS")
    r.warnings.append("only about r")
    r.metadata["modality"] = "CT"
    assert v.warnings == [] and v.metadata == {}


def test_exact_45_degree_oblique_still_has_a_valid_code():
    c = np.sqrt(0.5)  # exact ties, as in headers that store 0.707107 for both cosines
    v = _volume(np.array([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]]))
    code = v.orientation_code()
    assert sorted(code.replace("R", "L").replace("A", "P").replace("I", "S")) == ["L", "P", "S"]
    assert v.reoriented("RAS").orientation_code() == "RAS"
