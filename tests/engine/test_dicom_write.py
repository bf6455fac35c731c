"""The DICOM writer, checked with plain pydicom (not with our reader)."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from engine.io.dicom_write import stored_values, write_dicom_series
from engine.volume import Volume


def _volume(shape=(4, 40, 48), spacing=(2.5, 0.7, 0.8), origin=(-100.0, 50.5, 30.25), direction=None):
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 2500, shape).astype(np.int16)
    return Volume(hu, spacing, origin, np.eye(3) if direction is None else direction)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _digest(paths) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_geometry_and_pixels_follow_the_volume(tmp_path):
    vol = _volume()
    paths = write_dicom_series(vol, tmp_path, series_description="chest")
    assert len(paths) == 4 and all(p.exists() for p in paths)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.Modality == "CT" and ds.PatientName == "ANONYMOUS"
        assert ds.SeriesDescription == "chest"
        # origin + k * sz along +z, computed here by hand.
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [-100.0, 50.5, 30.25 + 2.5 * k]
        )
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.7, 0.8])  # [row, column]
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        assert (ds.Rows, ds.Columns) == (40, 48)
        assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
        np.testing.assert_array_equal(_hu(ds), vol.array[k])
        assert ds.InstanceNumber == k + 1


def test_unsigned_when_possible_signed_otherwise():
    assert stored_values(np.array([-1024, 3000]), 1.0, -1024.0).dtype == np.uint16
    assert stored_values(np.array([-2000, 3000]), 1.0, -1024.0).dtype == np.int16
    np.testing.assert_array_equal(stored_values(np.array([-1000.0, 0.0, 7.0]), 0.5, -1000.0), [0, 2000, 2014])
    with pytest.raises(ValueError):
        stored_values(np.array([-1024, 70000]), 1.0, -1024.0)


def test_signed_pixels_and_slope(tmp_path):
    vol = _volume(shape=(2, 8, 8))
    vol.array[0, 0, 0] = -3000
    ds = pydicom.dcmread(write_dicom_series(vol, tmp_path, slope=0.5, intercept=-100.0)[0])
    assert ds.PixelRepresentation == 1
    np.testing.assert_allclose(_hu(ds), vol.array[0])


def test_output_is_byte_deterministic_and_seed_changes_uids(tmp_path):
    vol = _volume(shape=(3, 8, 8))
    a = _digest(write_dicom_series(vol, tmp_path / "a", seed=3, instance_order="shuffled"))
    b = _digest(write_dicom_series(vol, tmp_path / "b", seed=3, instance_order="shuffled"))
    c = write_dicom_series(vol, tmp_path / "c", seed=4)
    assert a == b
    uids_a = pydicom.dcmread(sorted((tmp_path / "a").iterdir())[0])
    uids_c = pydicom.dcmread(c[0])
    assert uids_a.StudyInstanceUID != uids_c.StudyInstanceUID
    assert uids_a.SeriesInstanceUID != uids_c.SeriesInstanceUID


def test_given_uids_and_series_share_a_study(tmp_path):
    vol = _volume(shape=(2, 8, 8))
    p1 = write_dicom_series(vol, tmp_path, series_number=1)
    p2 = write_dicom_series(vol, tmp_path, series_number=2, study_date="20240131")
    d1, d2 = pydicom.dcmread(p1[0]), pydicom.dcmread(p2[0])
    assert d1.StudyInstanceUID == d2.StudyInstanceUID
    assert d1.FrameOfReferenceUID == d2.FrameOfReferenceUID
    assert d1.SeriesInstanceUID != d2.SeriesInstanceUID
    assert d2.StudyDate == "20240131" and d2.SeriesNumber == 2
    assert len(list(tmp_path.iterdir())) == 4  # distinct file names per series
    p3 = write_dicom_series(
        vol, tmp_path / "x", study_uid="1.2.3", series_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5"
    )
    d3 = pydicom.dcmread(p3[1])
    assert (d3.StudyInstanceUID, d3.SeriesInstanceUID, d3.FrameOfReferenceUID) == (
        "1.2.3",
        "1.2.3.4",
        "1.2.3.5",
    )


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_instance_order_is_independent_of_position(tmp_path, order):
    vol = _volume(shape=(6, 4, 4))
    paths = write_dicom_series(vol, tmp_path, instance_order=order, seed=7)
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert sorted(numbers) == list(range(1, 7))
    if order == "descending":
        assert numbers == [6, 5, 4, 3, 2, 1]
    else:
        assert numbers != list(range(1, 7))
    with pytest.raises(ValueError):
        write_dicom_series(vol, tmp_path, instance_order="random")


def test_oblique_and_tilted_geometry(tmp_path):
    t = np.deg2rad(20.0)
    # Rotation about z: rows/columns oblique in the axial plane.
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    vol = _volume(shape=(3, 8, 8), direction=rot)
    paths = write_dicom_series(vol, tmp_path / "oblique")
    ds = pydicom.dcmread(paths[2])
    np.testing.assert_allclose(
        [float(v) for v in ds.ImageOrientationPatient], [*rot[:, 0], *rot[:, 1]], atol=1e-12
    )
    np.testing.assert_allclose(
        [float(v) for v in ds.ImagePositionPatient], np.array([-100.0, 50.5, 30.25]) + 5.0 * rot[:, 2]
    )

    # Gantry tilt: the slice axis leans towards y by 15 degrees; slices step along it.
    tilt = np.deg2rad(15.0)
    direction = np.eye(3)
    direction[:, 2] = [0.0, np.sin(tilt), np.cos(tilt)]
    vol = _volume(shape=(3, 8, 8), direction=direction)
    paths = write_dicom_series(vol, tmp_path / "tilt")
    first, last = (pydicom.dcmread(p) for p in (paths[0], paths[2]))
    step = (
        np.array([float(v) for v in last.ImagePositionPatient])
        - [float(v) for v in first.ImagePositionPatient]
    ) / 2
    np.testing.assert_allclose(step, 2.5 * direction[:, 2], atol=1e-9)
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
    assert float(first.SliceThickness) == pytest.approx(2.5 * np.cos(tilt))


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]
)
def test_transfer_syntaxes_round_trip_pixels(tmp_path, syntax):
    vol = _volume(shape=(2, 64, 64))
    paths = write_dicom_series(vol, tmp_path, transfer_syntax=syntax)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(_hu(ds), vol.array[k])
    assert _digest(paths) == _digest(write_dicom_series(vol, tmp_path / "again", transfer_syntax=syntax))


def test_non_ct_modality_and_image_type(tmp_path):
    vol = _volume(shape=(1, 8, 8))
    ds = pydicom.dcmread(
        write_dicom_series(vol, tmp_path, modality="MR", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))[0]
    )
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def test_safe_metadata_is_written(tmp_path):
    vol = _volume(shape=(1, 8, 8))
    vol.metadata.update(manufacturer="SpeechCT synth", kernel="B30f", body_part="CHEST")
    ds = pydicom.dcmread(write_dicom_series(vol, tmp_path)[0])
    assert (ds.Manufacturer, ds.ConvolutionKernel, ds.BodyPartExamined) == ("SpeechCT synth", "B30f", "CHEST")
