"""Write a :class:`~engine.volume.Volume` as a DICOM series (one CT Image Storage file per slice).

Used for the committed sample study, synthetic data and the reader's tests, so the output is
*byte-deterministic*: the same volume, arguments and ``seed`` give identical files (no clock,
no random UIDs). Geometry comes exactly from the volume's affine; nothing is "tidied up":
an oblique direction gives an oblique ImageOrientationPatient, a non-orthogonal slice axis
(gantry tilt) gives slice positions that step along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from engine.volume import Volume

#: SOP classes by modality; anything else is written as Secondary Capture.
_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)

#: Volume.metadata keys copied into the files when present (all are safe, none identify a patient).
_METADATA_TAGS = {
    "manufacturer": "Manufacturer",
    "body_part": "BodyPartExamined",
    "kernel": "ConvolutionKernel",
    "study_description": "StudyDescription",
}


def deterministic_uid(seed: int, *parts: object) -> UID:
    """A UID under pydicom's root derived (SHA-512) from ``seed`` and ``parts`` only."""
    return generate_uid(entropy_srcs=["speechct", str(seed), *[str(p) for p in parts]])


def _ds(value: float) -> DSfloat:
    # auto_format keeps the string within DICOM's 16 characters with as many digits as fit.
    return DSfloat(float(value), auto_format=True)


def stored_values(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU (z, y, x) → stored integers ``round((HU − intercept) / slope)``.

    Returns uint16 when every value is non-negative and fits, else int16; raises ValueError
    when the values fit neither (choose another slope/intercept).
    """
    if slope == 0:
        raise ValueError("RescaleSlope must not be 0")
    stored = np.rint((np.asarray(array, dtype=np.float64) - intercept) / slope)
    lo, hi = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    if lo >= 0 and hi <= np.iinfo(np.uint16).max:
        return stored.astype(np.uint16)
    if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
        return stored.astype(np.int16)
    raise ValueError(
        f"stored values [{lo:.0f}, {hi:.0f}] fit neither uint16 nor int16 with slope {slope} "
        f"and intercept {intercept}"
    )


def _instance_numbers(n: int, order: str, seed: int) -> np.ndarray:
    """InstanceNumber of each slice index k (1-based), so file order ≠ spatial order on purpose."""
    if order == "ascending":
        return np.arange(1, n + 1)
    if order == "descending":
        return np.arange(n, 0, -1)
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(n) + 1
    raise ValueError(f"instance_order must be 'ascending', 'descending' or 'shuffled', got {order!r}")


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    series_description: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    study_date: str | None = None,
    series_number: int = 1,
    instance_order: str = "ascending",
    transfer_syntax: str | None = None,
    seed: int = 0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    acquisition_number: int = 1,
) -> list[Path]:
    """Write ``volume`` into ``folder`` as one single-frame DICOM file per slice.

    Geometry (LPS mm): slice ``k`` has ImagePositionPatient = ``volume.affine_lps() @ (0, 0, k, 1)``,
    ImageOrientationPatient = direction columns x then y, PixelSpacing = ``[sy, sx]`` (row spacing,
    column spacing), SliceThickness = the slice step measured along the slice normal (= ``sz``
    unless the gantry is tilted). Pixels: stored = ``round((HU − intercept) / slope)`` as uint16
    when all are non-negative and fit, else int16.

    UIDs not given are derived from ``seed``: the study and frame of reference from the seed alone
    (so series written with one seed share a study), the series from the seed, ``series_number``
    and ``series_description``, each SOP instance from the series UID and slice index.
    ``instance_order`` sets InstanceNumber against spatial order ("ascending", "descending",
    "shuffled" with ``seed``). ``transfer_syntax`` defaults to Explicit VR Little Endian; RLE,
    JPEG-LS and JPEG 2000 lossless UIDs are encoded by pydicom's installed plugins.

    Files are named ``{series_number:04d}-{InstanceNumber:05d}.dcm`` (existing ones are replaced).
    Returns the paths in slice-index order (k = 0 first).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.array)
    n = arr.shape[0]
    stored = stored_values(arr, slope, intercept)
    syntax = UID(transfer_syntax) if transfer_syntax else ExplicitVRLittleEndian
    if not syntax.is_transfer_syntax:
        raise ValueError(f"{syntax} is not a transfer syntax UID")
    if syntax.is_compressed and not syntax.is_encapsulated:
        raise ValueError(f"cannot write deflated transfer syntax {syntax.name}")

    study_uid = study_uid or deterministic_uid(seed, "study")
    series_uid = series_uid or deterministic_uid(seed, "series", series_number, series_description)
    frame_of_reference_uid = frame_of_reference_uid or deterministic_uid(seed, "frame-of-reference")
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)

    affine = volume.affine_lps()
    x_dir, y_dir = volume.direction[:, 0], volume.direction[:, 1]
    normal = np.cross(x_dir, y_dir)
    sz, sy, sx = volume.spacing
    thickness = abs(float(normal @ affine[:3, 2])) if n else sz  # step along the normal
    instance_numbers = _instance_numbers(n, instance_order, seed)

    template = _series_template(
        volume,
        modality=modality.upper(),
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_description=series_description,
        study_date=study_date,
        series_number=series_number,
        image_type=image_type,
        acquisition_number=acquisition_number,
    )
    template.ImageOrientationPatient = [_ds(v) for v in (*x_dir, *y_dir)]
    template.PixelSpacing = [_ds(sy), _ds(sx)]
    template.SliceThickness = _ds(thickness if thickness > 0 else sz)
    template.Rows, template.Columns = int(arr.shape[1]), int(arr.shape[2])
    template.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    template.RescaleSlope = _ds(slope)
    template.RescaleIntercept = _ds(intercept)

    paths = []
    for k in range(n):
        ds = _copy(template)
        position = affine @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.SliceLocation = _ds(float(normal @ position[:3]))
        ds.InstanceNumber = int(instance_numbers[k])
        ds.SOPInstanceUID = deterministic_uid(seed, series_uid, "instance", k)
        ds.file_meta = _file_meta(sop_class, ds.SOPInstanceUID)
        _set_pixels(ds, stored[k], syntax)
        path = folder / f"{series_number:04d}-{int(instance_numbers[k]):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_template(
    volume: Volume,
    *,
    modality: str,
    sop_class: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_description: str,
    study_date: str | None,
    series_number: int,
    image_type: Sequence[str],
    acquisition_number: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = sop_class
    ds.StudyDate = study_date or ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    # Never a real person: the writer makes synthetic and sample data only.
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "ANONYMOUS"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    for key, keyword in _METADATA_TAGS.items():
        if volume.metadata.get(key):
            setattr(ds, keyword, str(volume.metadata[key]))
    ds.KVP = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = int(series_number)
    ds.AcquisitionNumber = int(acquisition_number)
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleType = "HU" if modality == "CT" else "US"
    return ds


def _copy(template: Dataset) -> Dataset:
    ds = Dataset()
    for elem in template:
        ds.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))
    return ds


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    return meta


def _set_pixels(ds: Dataset, plane: np.ndarray, syntax: UID) -> None:
    """Store one (rows, columns) plane in ``ds`` with the requested transfer syntax."""
    if syntax in _UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = syntax
        order = ">" if syntax == ExplicitVRBigEndian else "<"
        ds.PixelData = np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder(order)).tobytes()
        ds["PixelData"].VR = "OW"
        return
    # Encoders work from an uncompressed little-endian dataset; keep the deterministic UID.
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(plane).astype(plane.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    ds.compress(syntax, generate_instance_uid=False)
