"""engine.io.nifti: RAS affines → LPS Volumes, CT-RATE overrides, v2 guard, atomic writes."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from engine.errors import SpeechCTWarning, StudyError
from engine.io import nifti as nifti_module
from engine.io.nifti import is_ctrate_v2, nifti_series_info, read_nifti, write_nifti
from engine.volume import Volume

SHAPE_IJK = (6, 5, 4)  # nibabel (i, j, k): columns, rows, slices


def _data_ijk(dtype=np.int16) -> np.ndarray:
    return (np.arange(np.prod(SHAPE_IJK)).reshape(SHAPE_IJK) * 7 - 300).astype(dtype)


def _save(data, affine, path, *, sform_code=1, qform_code=1, slope=None, inter=None, klass=nib.Nifti1Image):
    """A NIfTI made by nibabel directly (not by our writer) with explicit header codes."""
    # nibabel fills in an sform on save when given an affine and both codes are 0.
    img = klass(data, affine if (sform_code or qform_code) else None)
    img.header.set_sform(affine if sform_code else None, code=sform_code)
    img.header.set_qform(affine if qform_code else None, code=qform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# --------------------------------------------------------------------------- geometry


def test_ras_affine_becomes_lps_geometry_by_hand(tmp_path):
    # The usual CT-RATE-style affine: i → right-to-left... in RAS a negative x step is "towards L".
    affine = np.array(
        [[-0.7, 0.0, 0.0, 100.0], [0.0, -0.8, 0.0, 120.0], [0.0, 0.0, 2.5, -300.0], [0, 0, 0, 1]]
    )
    data = _data_ijk()
    v = read_nifti(_save(data, affine, tmp_path / "a.nii.gz"))
    # Worked by hand: LPS = (-x_ras, -y_ras, z_ras) → each step is +0.7 L, +0.8 P, +2.5 S.
    assert v.orientation_code() == "LPS"
    np.testing.assert_allclose(v.direction, np.eye(3), atol=1e-7)
    np.testing.assert_allclose(v.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(v.origin, (-100.0, -120.0, -300.0))
    assert v.shape == (4, 5, 6)
    assert v.array[3, 2, 1] == data[1, 2, 3]
    assert v.array.dtype == np.int16
    assert v.metadata["format"] == "nifti" and v.metadata["modality"] == "CT"


@pytest.mark.parametrize(
    "matrix",
    [
        np.diag([1.0, 1.0, 1.0]),  # RAS
        np.diag([-0.7, 0.8, -2.0]),  # LAI
        np.array([[0.0, 0.0, 1.5], [0.9, 0.0, 0.0], [0.0, -0.6, 0.0]]),  # permuted axes
        _rotation_z(25) @ np.diag([0.7, 0.7, 1.25]),  # oblique
    ],
)
def test_every_voxel_lands_where_nibabel_puts_it(tmp_path, matrix):
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = (12.5, -40.0, 7.0)
    data = _data_ijk()
    v = read_nifti(_save(data, affine, tmp_path / "b.nii"))
    # nibabel: RAS of (i, j, k) = affine @ (i, j, k, 1); ours: LPS of array[k, j, i].
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE_IJK), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4).T
    ras = (affine @ ijk1)[:3]
    lps_expected = ras * np.array([[-1.0], [-1.0], [1.0]])
    lps_ours = (v.affine_lps() @ ijk1)[:3]
    np.testing.assert_allclose(lps_ours, lps_expected, atol=1e-4)
    np.testing.assert_array_equal(v.array[k.ravel(), j.ravel(), i.ravel()], data[i.ravel(), j.ravel(), k.ravel()])
    np.testing.assert_allclose(v.direction.T @ v.direction, np.eye(3), atol=1e-6)


def test_sform_wins_over_qform_and_qform_is_the_fallback(tmp_path):
    data = _data_ijk()
    a_s = np.diag([-1.0, -1.0, 2.0, 1.0])
    a_q = np.diag([1.0, 1.0, 3.0, 1.0])
    img = nib.Nifti1Image(data, a_s)
    img.header.set_sform(a_s, code=2)
    img.header.set_qform(a_q, code=1)
    nib.save(img, str(tmp_path / "both.nii"))
    v = read_nifti(tmp_path / "both.nii")
    assert v.orientation_code() == "LPS" and v.spacing[0] == pytest.approx(2.0)

    v_q = read_nifti(_save(data, a_q, tmp_path / "qonly.nii", sform_code=0, qform_code=1))
    assert v_q.orientation_code() == "RAS" and v_q.spacing[0] == pytest.approx(3.0)


def test_no_sform_no_qform_warns(tmp_path):
    path = _save(_data_ijk(), np.eye(4), tmp_path / "nocode.nii", sform_code=0, qform_code=0)
    with pytest.warns(SpeechCTWarning, match="neither sform nor qform"):
        v = read_nifti(path)
    assert any("neither sform nor qform" in w for w in v.warnings)
    # CT-RATE v1 headers are blank: the voxel axes are taken in CT-RATE's order (i L, j P, k S),
    # so the array reaches prepare_ct unflipped.
    assert v.orientation_code() == "LPS"
    assert np.array_equal(v.array, np.transpose(_data_ijk(), (2, 1, 0)))


def test_four_d_with_one_volume_is_read(tmp_path):
    data = _data_ijk()[..., None]
    v = read_nifti(_save(data, np.eye(4), tmp_path / "four.nii.gz"))
    assert v.shape == (4, 5, 6)


def test_nifti2_and_suffixes_are_not_trusted(tmp_path):
    data = _data_ijk()
    affine = np.diag([-0.5, -0.5, 1.0, 1.0])
    plain = _save(data, affine, tmp_path / "x.nii", klass=nib.Nifti2Image)
    v2 = read_nifti(plain)
    assert v2.orientation_code() == "LPS"
    np.testing.assert_array_equal(v2.array, data.transpose(2, 1, 0))
    # plain bytes under a .nii.gz name, and gzip bytes under a .nii name
    (tmp_path / "plain.nii.gz").write_bytes(plain.read_bytes())
    (tmp_path / "zipped.nii").write_bytes(gzip.compress(plain.read_bytes()))
    for name in ("plain.nii.gz", "zipped.nii"):
        np.testing.assert_array_equal(read_nifti(tmp_path / name).array, v2.array)


def test_series_info_from_header_only(tmp_path):
    path = _save(_data_ijk(), np.diag([-0.7, -0.8, 2.5, 1.0]), tmp_path / "train_1_a_1.nii.gz")
    info = nifti_series_info(path)
    assert info.uid == str(path)
    assert info.description == "train_1_a_1"
    assert info.shape == (4, 5, 6) and info.n_slices == 4
    np.testing.assert_allclose(info.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    assert info.orientation == "LPS" and info.modality == "CT"


# --------------------------------------------------------------------------- intensities


def test_header_rescale_is_applied_when_no_override(tmp_path):
    data = _data_ijk()
    path = _save(data, np.eye(4), tmp_path / "scaled.nii", slope=2.0, inter=-1024.0)
    v = read_nifti(path)
    np.testing.assert_array_equal(v.array, (data.astype(np.int64) * 2 - 1024).transpose(2, 1, 0))
    assert v.array.dtype == np.int16


def test_overrides_win_over_header(tmp_path):
    data = _data_ijk()
    path = _save(data, np.diag([-0.7, -0.7, 5.0, 1.0]), tmp_path / "v1.nii.gz", slope=2.0, inter=-1024.0)
    v = read_nifti(path, slope=1.0, intercept=-1024.0, spacing=(1.5, 0.75, 0.8))
    np.testing.assert_array_equal(v.array, (data.astype(np.int64) - 1024).transpose(2, 1, 0))
    assert v.spacing == (1.5, 0.75, 0.8)
    # direction and origin are the header's
    np.testing.assert_allclose(v.direction, np.eye(3), atol=1e-7)
    np.testing.assert_allclose(v.origin, (0.0, 0.0, 0.0))
    # one override alone replaces only its own part
    v_slope = read_nifti(path, slope=3.0)
    np.testing.assert_array_equal(v_slope.array, (data.astype(np.int64) * 3 - 1024).transpose(2, 1, 0))


def test_non_integer_rescale_gives_float32(tmp_path):
    data = _data_ijk()
    v = read_nifti(_save(data, np.eye(4), tmp_path / "f.nii"), slope=0.5, intercept=-1000.0)
    assert v.array.dtype == np.float32
    np.testing.assert_allclose(v.array, (data * 0.5 - 1000.0).transpose(2, 1, 0))


def test_bad_overrides_are_refused(tmp_path):
    path = _save(_data_ijk(), np.eye(4), tmp_path / "o.nii")
    with pytest.raises(StudyError, match="rescale slope/intercept 0/0 cannot map stored values to HU"):
        read_nifti(path, slope=0.0)
    with pytest.raises(StudyError, match="spacing override"):
        read_nifti(path, spacing=(1.0, -1.0, 1.0))


def test_ctrate_v2_fixed_is_never_rescaled_twice(tmp_path):
    folder = tmp_path / "dataset" / "train_fixed" / "train_1" / "train_1_a"
    folder.mkdir(parents=True)
    hu = _data_ijk()
    path = _save(hu, np.diag([-0.7, -0.7, 1.5, 1.0]), folder / "train_1_a_1.nii.gz")
    assert is_ctrate_v2(path) and not is_ctrate_v2(tmp_path / "a.nii.gz")
    with pytest.warns(SpeechCTWarning, match="already holds HU"):
        v = read_nifti(path, slope=1.0, intercept=-1024.0, spacing=(1.5, 0.75, 0.75))
    np.testing.assert_array_equal(v.array, hu.transpose(2, 1, 0))
    assert any("already holds HU" in w for w in v.warnings)
    assert v.spacing == (1.5, 0.75, 0.75)  # spacing from the CSV still applies
    # identity overrides are no news: no warning (pytest turns one into an error)
    v_id = read_nifti(path, slope=1.0, intercept=0.0)
    np.testing.assert_array_equal(v_id.array, v.array)
    assert v_id.warnings == []


def test_partly_nan_volume_warns_and_fills_air(tmp_path):
    data = _data_ijk(np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    path = _save(data, np.eye(4), tmp_path / "nan.nii")
    with pytest.warns(SpeechCTWarning, match="2 of 120 voxels are NaN"):
        v = read_nifti(path)
    assert v.array[0, 0, 0] == -1024 and v.array[1, 1, 1] == -1024
    assert np.isfinite(v.array).all()


# --------------------------------------------------------------------------- writing


def _lps_volume(direction=None) -> Volume:
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 9 - 1000).astype(np.int16)
    return Volume(
        arr,
        (2.0, 0.75, 0.7),
        origin=(-120.5, 33.0, 1002.25),
        direction=np.eye(3) if direction is None else direction,
        metadata={"modality": "CT"},
    )


@pytest.mark.parametrize("name", ["rt.nii", "rt.nii.gz"])
@pytest.mark.parametrize(
    "direction",
    [np.eye(3), np.diag([-1.0, 1.0, -1.0]), _rotation_z(-15), np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])],
)
def test_write_read_round_trip(tmp_path, name, direction):
    v = _lps_volume(direction)
    path = write_nifti(v, tmp_path / name)
    r = read_nifti(path)
    np.testing.assert_array_equal(r.array, v.array)
    np.testing.assert_allclose(r.spacing, v.spacing, rtol=1e-6)
    np.testing.assert_allclose(r.origin, v.origin, atol=1e-4)
    np.testing.assert_allclose(r.direction, v.direction, atol=1e-6)
    assert r.orientation_code() == v.orientation_code()


def test_written_affine_is_ras_by_hand(tmp_path):
    path = write_nifti(_lps_volume(), tmp_path / "h.nii")
    img = nib.load(path)
    expected = np.array(
        [[-0.7, 0, 0, 120.5], [0, -0.75, 0, -33.0], [0, 0, 2.0, 1002.25], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(img.header.get_sform(), expected, atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), expected, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # nibabel's letters name where +axis points
    assert img.shape == (6, 5, 4)


def test_write_without_header_rescale_like_ctrate_v1(tmp_path):
    v = _lps_volume()
    path = write_nifti(v, tmp_path / "v1.nii.gz", slope=1.0, intercept=-1024.0)
    hdr = nib.Nifti1Header.from_fileobj(gzip.open(path, "rb"))
    assert float(hdr["scl_slope"]) == 0.0  # "no scaling" in NIfTI-1
    raw = np.asanyarray(nib.load(path).dataobj)
    np.testing.assert_array_equal(raw, (v.array.astype(np.int64) + 1024).transpose(2, 1, 0))
    np.testing.assert_array_equal(read_nifti(path, slope=1.0, intercept=-1024.0).array, v.array)


def test_write_with_header_rescale_rounds_to_the_stored_grid(tmp_path):
    v = _lps_volume()
    path = write_nifti(v, tmp_path / "hr.nii", slope=2.0, intercept=-1024.0, header_rescale=True)
    hdr = nib.Nifti1Header.from_fileobj(open(path, "rb"))
    assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (2.0, -1024.0)
    r = read_nifti(path)
    stored = np.rint((v.array.astype(np.float64) + 1024.0) / 2.0)
    np.testing.assert_array_equal(r.array, stored * 2 - 1024)
    assert np.abs(r.array.astype(int) - v.array).max() <= 1


def test_write_float32_keeps_values(tmp_path):
    v = _lps_volume().replace(array=_lps_volume().array.astype(np.float32) + 0.25)
    r = read_nifti(write_nifti(v, tmp_path / "f.nii", dtype="float32"))
    assert r.array.dtype == np.float32
    np.testing.assert_array_equal(r.array, v.array)


def test_write_is_deterministic(tmp_path):
    a = write_nifti(_lps_volume(), tmp_path / "a" / "x.nii.gz")
    b = write_nifti(_lps_volume(), tmp_path / "b" / "x.nii.gz")
    assert a.read_bytes() == b.read_bytes()


def test_write_out_of_range_refused_and_leaves_nothing(tmp_path):
    v = _lps_volume().replace(array=np.full((2, 2, 2), 40000.0))
    with pytest.raises(StudyError, match="do not fit int16"):
        write_nifti(v, tmp_path / "big.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "keep.nii.gz"
    write_nifti(_lps_volume(), target)
    before = target.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nifti_module, "array_to_file", disk_full)
    with pytest.raises(StudyError, match="No space left on device"):
        write_nifti(_lps_volume(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]
    assert target.read_bytes() == before


def test_write_refuses_other_suffixes(tmp_path):
    with pytest.raises(StudyError, match=r"\.nii or \.nii\.gz"):
        write_nifti(_lps_volume(), tmp_path / "x.img")


def test_written_file_has_normal_permissions(tmp_path):
    path = write_nifti(_lps_volume(), tmp_path / "p.nii")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_big_endian_file_gives_native_int16(tmp_path):
    data = _data_ijk()
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4), header=header), str(tmp_path / "be.nii"))
    v = read_nifti(tmp_path / "be.nii")
    assert v.array.dtype == np.dtype(np.int16) and v.array.dtype.isnative
    np.testing.assert_array_equal(v.array, data.transpose(2, 1, 0))


def test_results_beyond_int16_become_float32(tmp_path):
    data = np.full(SHAPE_IJK, 30000, np.int16)
    v = read_nifti(_save(data, np.eye(4), tmp_path / "wide.nii"), slope=2.0, intercept=0.0)
    assert v.array.dtype == np.float32 and float(v.array.max()) == 60000.0
