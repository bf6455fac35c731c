"""The DICOM reader on real files (pydicom's and pydicom-data's) and on series written by our writer.

Expected values are computed here independently: from the Volume that was written, or from
pydicom's own decoding plus the rescale, never from the reader's helpers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from engine.errors import SpeechCTWarning, StudyError
from engine.io.dicom import list_dicom_series, read_dicom, scan_dicom
from engine.io.dicom_write import deterministic_uid, write_dicom_series
from engine.volume import SAFE_METADATA_KEYS, Volume


def _data_store_file(name: str) -> str:
    import data_store

    path = Path(data_store.__file__).parent / "data" / name
    assert path.exists(), path
    return str(path)


def _testdata(name: str) -> str:
    # Never the download variant: it hangs offline.
    return get_testdata_file(name, download=False)


def _volume(
    shape=(6, 24, 20), spacing=(2.0, 0.75, 0.6), origin=(-50.0, 20.0, -100.0), direction=None, seed=0
):
    hu = np.random.default_rng(seed).integers(-1024, 2000, shape).astype(np.int16)
    return Volume(hu, spacing, origin, np.eye(3) if direction is None else direction)


def _rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
    }[axis]


def _assert_geometry(got: Volume, want: Volume, atol=1e-6):
    np.testing.assert_allclose(got.spacing, want.spacing, atol=atol)
    np.testing.assert_allclose(got.origin, want.origin, atol=atol)
    np.testing.assert_allclose(got.direction, want.direction, atol=atol)


def _set_position(path: Path, position) -> None:
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.save_as(path)


# --------------------------------------------------------------------------------------- real files


def test_ct_small_single_file_gives_one_slice_with_a_warning():
    path = _testdata("CT_small.dcm")
    ref = pydicom.dcmread(path)
    with pytest.warns(SpeechCTWarning, match="single 2-D slice"):
        vol = read_dicom(path)
    assert vol.shape == (1, 128, 128)
    hu = ref.pixel_array.astype(np.float64) * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
    assert float(ref.RescaleIntercept) == -1024
    np.testing.assert_array_equal(vol.array[0], hu)
    assert vol.array.dtype == np.int16
    assert vol.spacing[0] == float(ref.SliceThickness)
    np.testing.assert_allclose(vol.spacing[1:], [float(v) for v in ref.PixelSpacing])
    np.testing.assert_allclose(vol.origin, [float(v) for v in ref.ImagePositionPatient])
    iop = [float(v) for v in ref.ImageOrientationPatient]
    np.testing.assert_allclose(vol.direction[:, 0], iop[:3])
    np.testing.assert_allclose(vol.direction[:, 1], iop[3:])
    np.testing.assert_allclose(vol.direction[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-6)
    assert vol.metadata["modality"] == "CT" and vol.metadata["format"] == "dicom"
    assert set(vol.metadata) <= set(SAFE_METADATA_KEYS)
    assert str(ref.PatientName) not in str(vol.metadata.values())
    assert vol.warnings and "single 2-D slice" in vol.warnings[0]


@pytest.mark.parametrize(
    "path, kind",
    [
        (lambda: _testdata("MR_small.dcm"), "modality MR, not CT"),
        (lambda: _data_store_file("US1_UNCR.dcm"), "modality US, not CT"),
        (lambda: _testdata("rtplan.dcm"), "no pixel data"),
        (lambda: _testdata("MR_truncated.dcm"), "truncated pixel data"),
    ],
)
def test_unusable_single_files_raise_one_line_naming_the_file(path, kind):
    path = path()
    with pytest.raises(StudyError) as info:
        read_dicom(path)
    message = str(info.value)
    assert kind in message and path in message and "\n" not in message


def test_compressed_and_uncompressed_693_give_the_same_hu():
    def load(path):
        with pytest.warns(SpeechCTWarning, match="single 2-D slice"):
            return read_dicom(path).array.astype(np.float64)

    lossless = load(_data_store_file("693_J2KR.dcm"))
    raw = load(_data_store_file("693_UNCR.dcm"))
    np.testing.assert_array_equal(lossless, raw)
    # Raw file is signed with BitsStored 14: compare with pydicom's own decoding + rescale.
    ref = pydicom.dcmread(_data_store_file("693_UNCR.dcm"))
    np.testing.assert_array_equal(
        raw[0], ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
    )
    lossy = load(_testdata("693_J2KI.dcm"))
    np.testing.assert_array_equal(lossy, load(_data_store_file("693_UNCI.dcm")))  # its decoded twin
    # Lossy JPEG 2000 (strong compression) stays close to the original: median error 27 HU.
    assert np.median(np.abs(lossy - raw)) < 40.0
    assert np.corrcoef(lossy.ravel(), raw.ravel())[0, 1] > 0.99


def test_jpeg_lossless_bad_sequence_file_decodes():
    path = _data_store_file("bad_sequence.dcm")
    ref = pydicom.dcmread(path)
    with pytest.warns(SpeechCTWarning, match="single 2-D slice"):
        vol = read_dicom(path)
    np.testing.assert_array_equal(vol.array[0], ref.pixel_array.astype(np.int32) + int(ref.RescaleIntercept))


def test_enhanced_ct_multiframe():
    path = _data_store_file("eCT_Supplemental.dcm")
    ref = pydicom.dcmread(path)
    frames = ref.pixel_array.astype(np.int32)
    vol = read_dicom(path)  # two frames 10 mm apart: no warning expected
    assert vol.shape == (2, 512, 512)
    # IOP (-1,0,0 / 0,1,0): normal is -z, so the frame at z = -149 (frame 1) comes first.
    np.testing.assert_array_equal(vol.array[0], frames[1] - 1024)
    np.testing.assert_array_equal(vol.array[1], frames[0] - 1024)
    np.testing.assert_allclose(vol.origin, [99.5, -301.5, -149.0])
    np.testing.assert_allclose(vol.spacing, [10.0, 0.388672, 0.388672])
    np.testing.assert_allclose(vol.direction, [[-1, 0, 0], [0, 1, 0], [0, 0, -1]], atol=1e-12)
    assert vol.metadata["format"] == "dicom-enhanced"
    info = list_dicom_series(path)
    assert len(info) == 1 and info[0].n_slices == 2


def _item(**values) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def test_enhanced_ct_per_frame_groups_override_shared(tmp_path):
    """eCT_Supplemental rebuilt with 4 frames: per-frame rescale and orientation, 2 temporal positions."""
    ds = pydicom.dcmread(_data_store_file("eCT_Supplemental.dcm"))
    frames = ds.pixel_array  # (2, 512, 512) uint16
    stored = np.stack([frames[0], frames[1], frames[1][::-1], frames[0][::-1]]).astype(np.uint16)
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.PixelValueTransformationSequence
    del shared.PlaneOrientationSequence
    positions = [[99.5, -301.5, z] for z in (-159.0, -149.0, -159.0, -149.0)]
    slopes, intercepts, temporal = [1.0, 2.0, 1.0, 1.0], [-1024.0, -1000.0, -1024.0, -1024.0], [1, 1, 2, 2]
    per_frame = []
    for k in range(4):
        item = Dataset()
        item.FrameContentSequence = Sequence(
            [_item(TemporalPositionIndex=temporal[k], FrameAcquisitionNumber=1)]
        )
        item.PlanePositionSequence = Sequence([_item(ImagePositionPatient=positions[k])])
        item.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[-1, 0, 0, 0, 1, 0])])
        item.PixelValueTransformationSequence = Sequence(
            [_item(RescaleSlope=slopes[k], RescaleIntercept=intercepts[k], RescaleType="HU")]
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = 4
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp_path / "enhanced.dcm")

    infos = list_dicom_series(tmp_path)
    uid = str(ds.SeriesInstanceUID)
    assert [(i.uid, i.n_slices) for i in infos] == [(uid + ".acqt1", 2), (uid + ".acqt2", 2)]
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        first = read_dicom(tmp_path, series=uid + ".acqt1")
    # Normal is -z: the frame at z = -149 comes first. HU = stored * slope + intercept per frame.
    assert first.array.dtype == np.int16
    np.testing.assert_array_equal(first.array[0], stored[1].astype(np.int32) * 2 - 1000)
    np.testing.assert_array_equal(first.array[1], stored[0].astype(np.int32) - 1024)
    np.testing.assert_allclose(first.direction[:, 0], [-1, 0, 0])
    np.testing.assert_allclose(first.spacing[0], 10.0)
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        second = read_dicom(tmp_path, series=uid + ".acqt2")
    np.testing.assert_array_equal(second.array[0], stored[3].astype(np.int32) - 1024)


def test_file_cut_inside_its_header_is_truncated_not_non_image(tmp_path):
    path = write_dicom_series(_volume(shape=(1, 16, 16)), tmp_path)[0]
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(StudyError, match="truncated file") as info:
        read_dicom(path)
    assert str(path) in str(info.value)
    with pytest.raises(StudyError, match="truncated file"):
        read_dicom(tmp_path)


def test_elements_stored_as_un_are_still_read():
    path = _data_store_file("explicit_VR-UN.dcm")
    ref = pydicom.dcmread(path)
    with pytest.warns(SpeechCTWarning, match="single 2-D slice"):
        vol = read_dicom(path)
    np.testing.assert_array_equal(
        vol.array[0], ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
    )


def test_folder_skips_non_dicom_silently_and_counts(tmp_path):
    vol = _volume(shape=(3, 8, 8))
    write_dicom_series(vol, tmp_path / "sub" / "deeper")
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "sub" / "thumbs.db").write_bytes(b"\x00" * 300)
    shutil.copy(_testdata("rtplan.dcm"), tmp_path / "plan.dcm")
    got = read_dicom(tmp_path)  # no warning: skipped files are only counted
    np.testing.assert_array_equal(got.array, vol.array)
    study = scan_dicom(tmp_path)
    assert (study.n_files, len(study.non_dicom), len(study.non_image), len(study.series)) == (6, 2, 1, 1)


def test_empty_and_non_dicom_folders_raise(tmp_path):
    with pytest.raises(StudyError, match="empty folder"):
        read_dicom(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(StudyError, match="a.txt: not a DICOM file"):
        read_dicom(tmp_path)
    (tmp_path / "b.bin").write_bytes(bytes(range(256)))
    with pytest.raises(StudyError, match="no DICOM files"):
        read_dicom(tmp_path)
    with pytest.raises(StudyError, match="not a DICOM file"):
        read_dicom(tmp_path / "a.txt")
    with pytest.raises(StudyError, match="no such file"):
        read_dicom(tmp_path / "missing")
    assert list_dicom_series(tmp_path) == []


def test_truncated_slice_in_a_series_raises_naming_it(tmp_path):
    paths = write_dicom_series(_volume(shape=(3, 16, 16)), tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 100])
    with pytest.raises(StudyError, match="truncated") as info:
        read_dicom(paths[1])
    assert str(paths[1]) in str(info.value)
    # In a folder the good slices still load, the broken file is reported, not hidden.
    with pytest.warns(SpeechCTWarning) as record:
        vol = read_dicom(tmp_path)
    messages = " ".join(str(w.message) for w in record)
    assert "could not be read" in messages and str(paths[1]) in messages
    assert vol.shape[0] == 2


def test_non_ct_series_written_by_us_is_refused(tmp_path):
    write_dicom_series(_volume(shape=(3, 8, 8)), tmp_path, modality="MR")
    with pytest.raises(StudyError, match="modality MR, not CT"):
        read_dicom(tmp_path)
    assert list_dicom_series(tmp_path)[0].modality == "MR"


# ---------------------------------------------------------------------------------- written series


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_round_trip_oblique_series(tmp_path, order):
    want = _volume(direction=_rotation("z", 25.0) @ _rotation("x", 10.0))
    write_dicom_series(want, tmp_path, instance_order=order, seed=5)
    got = read_dicom(tmp_path)
    assert got.array.dtype == np.int16 and got.warnings == []
    np.testing.assert_array_equal(got.array, want.array)
    _assert_geometry(got, want)
    assert got.is_oblique()
    assert got.metadata["series_uid"] == str(pydicom.dcmread(next(tmp_path.iterdir())).SeriesInstanceUID)


def test_round_trip_float_rescale_and_workers(tmp_path):
    want = _volume(shape=(4, 10, 12))
    want = want.replace(array=want.array.astype(np.float32) + 0.5)
    write_dicom_series(want, tmp_path, slope=0.5, intercept=-1000.0)
    got = read_dicom(tmp_path, workers=1)
    assert got.array.dtype == np.float32
    np.testing.assert_allclose(got.array, want.array, atol=1e-4)
    np.testing.assert_array_equal(read_dicom(tmp_path, workers=4).array, got.array)


def test_slope_two_stays_int16(tmp_path):
    want = _volume(shape=(2, 8, 8))
    want = want.replace(array=(want.array // 2) * 2)
    write_dicom_series(want, tmp_path, slope=2.0, intercept=-1024.0)
    got = read_dicom(tmp_path)
    assert got.array.dtype == np.int16
    np.testing.assert_array_equal(got.array, want.array)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, ExplicitVRBigEndian, ImplicitVRLittleEndian])
def test_round_trip_other_transfer_syntaxes(tmp_path, syntax):
    want = _volume(shape=(3, 16, 16))
    write_dicom_series(want, tmp_path, transfer_syntax=syntax, instance_order="shuffled")
    got = read_dicom(tmp_path)
    np.testing.assert_array_equal(got.array, want.array)
    _assert_geometry(got, want)


def test_deflated_files_are_read(tmp_path):
    want = _volume(shape=(3, 16, 16))
    for path in write_dicom_series(want, tmp_path, instance_order="descending"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    got = read_dicom(tmp_path)
    np.testing.assert_array_equal(got.array, want.array)
    _assert_geometry(got, want)
    with pytest.raises(StudyError, match="modality OT, not CT"):
        read_dicom(_testdata("image_dfl.dcm"))


def test_signed_pixels_round_trip(tmp_path):
    want = _volume(shape=(2, 8, 8))
    want.array[1, 2, 3] = -3000  # below the intercept: stored as int16
    write_dicom_series(want, tmp_path)
    assert pydicom.dcmread(next(tmp_path.iterdir())).PixelRepresentation == 1
    np.testing.assert_array_equal(read_dicom(tmp_path).array, want.array)


def test_two_series_in_one_folder(tmp_path):
    small = _volume(shape=(3, 16, 16), seed=1)
    big = _volume(shape=(5, 16, 16), seed=2)
    write_dicom_series(small, tmp_path, series_number=1, series_description="scout-ish")
    write_dicom_series(big, tmp_path, series_number=2, series_description="chest")
    infos = list_dicom_series(tmp_path)
    assert [i.n_slices for i in infos] == [3, 5]
    assert [i.description for i in infos] == ["scout-ish", "chest"]
    with pytest.warns(SpeechCTWarning, match="2 series found") as record:
        got = read_dicom(tmp_path)
    assert "scout-ish" in str(record[0].message)
    np.testing.assert_array_equal(got.array, big.array)
    assert got.metadata["series_description"] == "chest"
    with pytest.warns(SpeechCTWarning, match="loaded"):
        chosen = read_dicom(tmp_path, series=infos[0].uid)
    np.testing.assert_array_equal(chosen.array, small.array)
    with pytest.raises(StudyError, match="no series 1.2.3"):
        read_dicom(tmp_path, series="1.2.3")


def test_missing_slice_is_reported_not_filled(tmp_path):
    want = _volume(shape=(8, 8, 8))
    paths = write_dicom_series(want, tmp_path)
    paths[4].unlink()
    with pytest.warns(SpeechCTWarning, match="about 1 missing slice"):
        got = read_dicom(tmp_path)
    assert got.shape == (7, 8, 8)
    np.testing.assert_array_equal(got.array, np.delete(want.array, 4, axis=0))
    assert got.spacing[0] == pytest.approx(2.0)
    assert any("missing" in w for w in got.warnings)
    assert any("missing" in w for w in list_dicom_series(tmp_path)[0].warnings)


def test_duplicated_position_is_reported_and_one_copy_kept(tmp_path):
    want = _volume(shape=(4, 8, 8))
    paths = write_dicom_series(want, tmp_path)
    dup = pydicom.dcmread(paths[2])
    dup.SOPInstanceUID = deterministic_uid(0, "duplicate")
    dup.InstanceNumber = 99
    dup.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    dup.save_as(tmp_path / "dup.dcm")
    with pytest.warns(SpeechCTWarning, match="duplicate the position") as record:
        got = read_dicom(tmp_path)
    assert "dup.dcm" in str(record[0].message)
    np.testing.assert_array_equal(got.array, want.array)  # the lower InstanceNumber is kept
    _assert_geometry(got, want)


def test_tilted_gantry_keeps_an_exact_sheared_affine(tmp_path):
    tilt = np.deg2rad(12.0)
    direction = np.eye(3)
    direction[:, 2] = [0.0, np.sin(tilt), np.cos(tilt)]
    want = _volume(shape=(5, 12, 10), direction=direction)
    write_dicom_series(want, tmp_path, instance_order="shuffled")
    with pytest.warns(SpeechCTWarning, match="gantry tilt of 12.00"):
        got = read_dicom(tmp_path)
    np.testing.assert_array_equal(got.array, want.array)
    _assert_geometry(got, want)
    # Every voxel lands where the written volume put it.
    np.testing.assert_allclose(got.affine_lps(), want.affine_lps(), atol=1e-6)


def test_non_uniform_spacing_is_reported(tmp_path):
    want = _volume(shape=(5, 8, 8), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    paths = write_dicom_series(want, tmp_path)
    for k, z in enumerate([0.0, 2.0, 4.0, 7.0, 9.0]):
        _set_position(paths[k], (0.0, 0.0, z))
    with pytest.warns(SpeechCTWarning, match="non-uniform slice spacing") as record:
        got = read_dicom(tmp_path)
    assert "2.000–3.000 mm" in str(record[0].message)
    assert got.spacing[0] == pytest.approx(2.0)  # the median step
    np.testing.assert_array_equal(got.array, want.array)


def test_localizer_in_the_same_series_is_kept_apart(tmp_path):
    axial = _volume(shape=(4, 16, 16), seed=3)
    write_dicom_series(axial, tmp_path, series_uid="1.2.826.0.1.3680043.8.498.1", series_number=2)
    # Localizer: one sagittal frame (rows along -S, columns along +P), same SeriesInstanceUID.
    sagittal = np.stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], axis=1)
    scout = _volume(shape=(1, 16, 16), direction=sagittal, seed=4)
    write_dicom_series(
        scout,
        tmp_path / "scout",
        series_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=1,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    infos = list_dicom_series(tmp_path)
    assert sorted(i.n_slices for i in infos) == [1, 4]
    assert all(i.uid.startswith("1.2.826.0.1.3680043.8.498.1.type") for i in infos)
    scout_info = next(i for i in infos if "LOCALIZER" in i.image_type)
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        got = read_dicom(tmp_path)
    np.testing.assert_array_equal(got.array, axial.array)
    with pytest.warns(SpeechCTWarning):
        scout_vol = read_dicom(tmp_path, series=scout_info.uid)
    np.testing.assert_array_equal(scout_vol.array, scout.array)
    np.testing.assert_allclose(scout_vol.direction[:, :2], sagittal[:, :2])


def test_two_orientations_in_one_series_are_split(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.77"
    axial = _volume(shape=(5, 8, 8), seed=5)
    coronal_dir = np.stack([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], axis=1)
    coronal = _volume(shape=(3, 8, 8), direction=coronal_dir, seed=6)
    write_dicom_series(axial, tmp_path / "a", series_uid=uid)
    write_dicom_series(coronal, tmp_path / "c", series_uid=uid)
    infos = list_dicom_series(tmp_path)
    assert [(i.uid, i.n_slices) for i in infos] == [(uid + ".ori1", 5), (uid + ".ori2", 3)]
    assert infos[1].orientation == "LIP"  # +x → L, +y → I (rows go down), +z (normal) → P
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        got = read_dicom(tmp_path, series=uid + ".ori2")
    np.testing.assert_array_equal(got.array, coronal.array)
    _assert_geometry(got, coronal)


def test_orientation_jitter_does_not_split(tmp_path):
    want = _volume(shape=(4, 8, 8))
    paths = write_dicom_series(want, tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1.0, 0.00004999, 0.0, 0.00005001, 1.0, 0.0]  # straddles a rounding boundary
    ds.save_as(paths[1])
    assert len(list_dicom_series(tmp_path)) == 1
    np.testing.assert_array_equal(read_dicom(tmp_path).array, want.array)


def test_acquisitions_are_split_when_each_has_several_slices(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.78"
    first = _volume(shape=(4, 8, 8), seed=7)
    second = _volume(shape=(4, 8, 8), seed=8)  # same positions: e.g. inspiration / expiration
    write_dicom_series(first, tmp_path / "1", series_uid=uid, acquisition_number=1)
    write_dicom_series(second, tmp_path / "2", series_uid=uid, acquisition_number=2)
    infos = list_dicom_series(tmp_path)
    assert [i.uid for i in infos] == [uid + ".acq1", uid + ".acq2"]
    with pytest.warns(SpeechCTWarning, match="2 series found"):
        got = read_dicom(tmp_path, series=uid + ".acq2")
    np.testing.assert_array_equal(got.array, second.array)


def test_one_acquisition_number_per_slice_does_not_split(tmp_path):
    want = _volume(shape=(4, 8, 8))
    paths = write_dicom_series(want, tmp_path)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = k + 1
        ds.save_as(path)
    assert len(list_dicom_series(tmp_path)) == 1
    np.testing.assert_array_equal(read_dicom(tmp_path).array, want.array)


def test_metadata_is_safe_and_informative(tmp_path):
    want = _volume(shape=(2, 8, 8))
    want.metadata.update(kernel="B30f", manufacturer="Synth")
    paths = write_dicom_series(
        want, tmp_path, series_description="lung", study_date="20250102", series_number=7
    )
    got = read_dicom(tmp_path)
    assert set(got.metadata) <= set(SAFE_METADATA_KEYS)
    assert got.metadata["series_description"] == "lung"
    assert got.metadata["study_date"] == "20250102"
    assert got.metadata["series_number"] == 7
    assert got.metadata["kernel"] == "B30f" and got.metadata["manufacturer"] == "Synth"
    assert got.metadata["slice_thickness"] == pytest.approx(2.0)
    assert got.metadata["source"] == str(tmp_path)
    assert "ANONYMOUS" not in repr(got.metadata)
    assert os.fspath(paths[0]) in list_dicom_series(tmp_path)[0].files


def test_named_pipe_inside_a_dicom_folder_is_skipped_not_waited_on(tmp_path):
    import os

    from engine.io.dicom_scan import list_files

    (tmp_path / "a.dcm").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.dcm")
    assert list_files(tmp_path) == [str(tmp_path / "a.dcm")]
