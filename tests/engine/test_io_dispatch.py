"""engine.io.load_volume / list_series: dispatch by content, series choice, cross-format agreement."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest

import engine.io as io
from engine.errors import SpeechCTWarning, StudyError
from engine.io import list_series, load_volume
from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _volume(direction=None, n_slices: int = 4) -> Volume:
    rng = np.random.default_rng(7)
    arr = rng.integers(-1024, 2000, size=(n_slices, 6, 5)).astype(np.int16)
    return Volume(
        arr,
        (2.5, 0.75, 0.625),
        origin=(-100.25, 50.5, -300.0),
        direction=np.eye(3) if direction is None else direction,
    )


# --------------------------------------------------------------------------- re-exports


def test_reexports_and_lazy_imports():
    from engine.io import SeriesInfo, read_dicom, read_nifti, write_dicom_series, write_nifti  # noqa: F401

    assert callable(read_dicom) and callable(write_nifti) and SeriesInfo.__name__ == "SeriesInfo"
    with pytest.raises(AttributeError):
        io.no_such_reader  # noqa: B018
    # Importing the package (e.g. for SeriesInfo) does not pull nibabel or pydicom.
    code = "import sys, engine.io; print('nibabel' in sys.modules, 'pydicom' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- the same volume, two formats


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),  # LPS: DICOM's own axial order
        np.diag([1.0, 1.0, -1.0]),  # slices run head → feet: the DICOM reader sorts them feet → head
        np.diag([-1.0, -1.0, 1.0]),  # RAS, as NIfTI tools like to store
        np.array([[1.0, 0, 0], [0, 0, -1], [0, -1, 0]]),  # coronal
        _rotation_z(12),  # oblique
    ],
    ids=["LPS", "LPI", "RAS", "coronal", "oblique"],
)
def test_same_volume_as_nifti_and_dicom_reads_back_identically(tmp_path, direction):
    v = _volume(direction)
    write_nifti(v, tmp_path / "vol.nii.gz")
    write_dicom_series(v, tmp_path / "dicom", intercept=-1024.0, instance_order="shuffled", seed=3)
    from_nifti = load_volume(tmp_path / "vol.nii.gz")
    from_dicom = load_volume(tmp_path / "dicom")
    assert from_nifti.metadata["format"] == "nifti" and from_dicom.metadata["format"] == "dicom"
    a, b = from_nifti.reoriented("LPS"), from_dicom.reoriented("LPS")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)
    # and both are the original voxels in the original places
    ref = v.reoriented("LPS")
    np.testing.assert_array_equal(a.array, ref.array)
    np.testing.assert_allclose(a.origin, ref.origin, atol=1e-3)


# --------------------------------------------------------------------------- dispatch by content


def test_suffixes_are_not_trusted(tmp_path):
    v = _volume()
    nifti = write_nifti(v, tmp_path / "vol.nii")
    (tmp_path / "misnamed.dcm").write_bytes(nifti.read_bytes())
    (tmp_path / "zipped.bin").write_bytes(gzip.compress(nifti.read_bytes()))
    dicom_files = write_dicom_series(v, tmp_path / "d")
    for f in dicom_files:  # DICOM files without any suffix, as scanners write them
        f.rename(f.with_suffix(""))
    loaded = {
        "misnamed.dcm": load_volume(tmp_path / "misnamed.dcm"),
        "zipped.bin": load_volume(tmp_path / "zipped.bin"),
        "d": load_volume(tmp_path / "d"),
    }
    assert loaded["misnamed.dcm"].metadata["format"] == "nifti"
    assert loaded["zipped.bin"].metadata["format"] == "nifti"
    assert loaded["d"].metadata["format"] == "dicom"
    for vol in loaded.values():
        np.testing.assert_array_equal(vol.array, v.array)


def test_single_dicom_file(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "d")
    with pytest.warns(SpeechCTWarning, match="single 2-D slice"):
        vol = load_volume(files[0])
    assert vol.shape == (1, 6, 5)
    [info] = list_series(files[0])
    assert info.n_slices == 1


def test_folder_with_one_nifti(tmp_path):
    write_nifti(_volume(), tmp_path / "scan" / "a.nii.gz")
    (tmp_path / "scan" / "readme.txt").write_text("not an image")
    vol = load_volume(tmp_path / "scan")
    assert vol.metadata["series_description"] == "a"
    assert len(vol.warnings) == 1 and "a.nii.gz: small field of view" in vol.warnings[0]  # the gate's note only


def test_folder_with_several_nifti_chooses_the_largest_and_says_so(tmp_path):
    write_nifti(_volume(n_slices=2), tmp_path / "train_1_a_1.nii.gz")
    write_nifti(_volume(n_slices=5), tmp_path / "train_1_a_2.nii.gz")
    with pytest.warns(SpeechCTWarning, match="chose train_1_a_2.nii.gz"):
        vol = load_volume(tmp_path)
    assert vol.shape[0] == 5
    for name in ("train_1_a_1", "train_1_a_1.nii.gz", str(tmp_path / "train_1_a_1.nii.gz")):
        assert load_volume(tmp_path, series=name).shape[0] == 2
    with pytest.raises(StudyError, match="series 'nope' not found; NIfTI files here: train_1_a_1.nii.gz"):
        load_volume(tmp_path, series="nope")
    infos = list_series(tmp_path)
    assert [i.description for i in infos] == ["train_1_a_1", "train_1_a_2"]


def test_mixed_folder_lists_both_and_loads_dicom_by_default(tmp_path):
    v = _volume()
    write_dicom_series(v, tmp_path / "dicom", series_description="axial")
    write_nifti(v, tmp_path / "nifti" / "seg.nii.gz")
    infos = list_series(tmp_path)
    assert sorted(i.modality for i in infos) == ["CT", "CT"]
    assert {i.description for i in infos} == {"axial", "seg"}
    assert load_volume(tmp_path).metadata["format"] == "dicom"
    assert load_volume(tmp_path, series="seg.nii.gz").metadata["format"] == "nifti"


def test_dicom_series_choice_is_the_readers(tmp_path):
    write_dicom_series(_volume(n_slices=3), tmp_path, series_number=1, series_description="small")
    write_dicom_series(_volume(n_slices=5), tmp_path, series_number=2, series_description="big")
    infos = list_series(tmp_path)
    assert sorted(i.n_slices for i in infos) == [3, 5]
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        vol = load_volume(tmp_path)
    assert vol.shape[0] == 5
    small = next(i for i in infos if i.description == "small")
    with pytest.warns(SpeechCTWarning, match="loaded .* 'small'"):
        assert load_volume(tmp_path, series=small.uid).shape[0] == 3


def test_overrides_reach_nifti_and_are_refused_for_dicom(tmp_path):
    v = _volume()
    path = write_nifti(v, tmp_path / "v1.nii.gz", intercept=-1024.0)
    vol = load_volume(path, slope=1.0, intercept=-1024.0, spacing=(1.5, 0.7, 0.7))
    np.testing.assert_array_equal(vol.array, v.array)
    assert vol.spacing == (1.5, 0.7, 0.7)
    write_dicom_series(v, tmp_path / "d")
    with pytest.raises(ValueError, match="NIfTI only"):
        load_volume(tmp_path / "d", slope=2.0)


def test_missing_and_empty(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load_volume(tmp_path / "nothing")
    with pytest.raises(StudyError, match="does not exist"):
        list_series(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("x")
    with pytest.raises(StudyError, match="folder is empty"):
        load_volume(tmp_path / "empty")
    with pytest.raises(StudyError, match="folder is empty"):
        list_series(tmp_path / "empty")


def test_errors_carry_the_path(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(StudyError) as err:
        load_volume(tmp_path / "a.txt")
    assert err.value.path == str(tmp_path / "a.txt")
    assert "\n" not in str(err.value)


def test_nifti_pair_is_read(tmp_path):
    import nibabel as nib

    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    nib.save(nib.Nifti1Pair(data, np.diag([-1.0, -1.0, 2.0, 1.0])), str(tmp_path / "pair.hdr"))
    vol = load_volume(tmp_path / "pair.hdr")
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0))
    assert vol.orientation_code() == "LPS"
