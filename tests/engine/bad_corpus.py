"""The named bad-input corpus: hostile or odd inputs across DICOM, NIfTI, audio, bundles, libraries and
paths, each a builder that makes its input under a folder and returns the ``speechct`` command lines
to run on it, with what must come out.

Rule for every case (``tests/engine/test_bad_input_corpus.py``): it ends within 30 s and 2 GB, with
exit 0 (and the warning named, when the case names one), or exit 2 and exactly one
``speechct: error:`` line naming the file; never a traceback, never "unexpected". Studies are run
through ``info`` and ``rank``, which must agree (same exit code; the same error line).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import sqlite3
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import soundfile

from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume

REPO = Path(__file__).resolve().parents[2]
SPEECH = REPO / "assets" / "samples" / "study-001" / "dictation.wav"
NAN, INF = float("nan"), float("inf")


@dataclass
class Case:
    name: str
    category: str  # dicom | nifti | audio | bundle | library | path
    build: Callable[[Path], dict]  # -> {"runs": [argv, ...], "where": path named by errors}
    expect: str = "either"  # "error" | "ok" | "either"
    fragments: tuple[str, ...] = ()  # in the error line (expect error) or in stdout+stderr (expect ok)
    study: bool = False  # a CT study: run through info and rank, which must agree
    extra: dict = field(default_factory=dict)


CASES: list[Case] = []


def case(name, category, expect="either", fragments=(), study=False):
    def register(build):
        CASES.append(Case(name, category, build, expect, tuple([fragments] if isinstance(fragments, str) else fragments),
                          study))
        return build

    return register


# ----------------------------------------------------------------------------- building blocks


def chest(shape=(16, 32, 32), spacing=(2.5, 1.4, 1.4), seed=0) -> Volume:
    """A little 'chest': body ellipse, two lungs, noise (big enough for the tiny bundle's 20 x 11.2 mm grid)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    hu[((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0
    hu += np.random.default_rng(seed).normal(0, 15, shape)
    return Volume(np.round(hu).astype(np.int16), spacing)


def dicom(tmp: Path, name: str = "series", volume: Volume | None = None, **kwargs) -> Path:
    folder = tmp / name
    write_dicom_series(volume or chest(), folder, **kwargs)
    return folder


def mutate(folder: Path, which: str = "all", **fields) -> Path:
    """Set header fields of all slices (or of the first) of a series written by :func:`dicom`."""
    files = sorted(folder.glob("*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom says the values are invalid: they are meant to be
        for f in files if which == "all" else files[:1]:
            ds = pydicom.dcmread(f)
            for key, value in fields.items():
                if value is None:
                    if key in ds:
                        delattr(ds, key)
                else:
                    setattr(ds, key, value)
            ds.save_as(f)
    return folder


def raw_element(folder: Path, tag: tuple[int, int], vr: str, value: bytes, which: str = "all") -> Path:
    """Write a raw element value (wrong VR, garbage bytes) that pydicom would not produce itself."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    files = sorted(folder.glob("*.dcm"))
    for f in files if which == "all" else files[:1]:
        ds = pydicom.dcmread(f)
        t = Tag(*tag)
        ds._dict[t] = RawDataElement(t, vr, len(value), value, 0, False, True)
        ds.save_as(f)
    return folder


def study_runs(path: Path) -> dict:
    return {"runs": [["info", path], ["rank", "--ct", path]], "where": path}


def nifti(tmp: Path, name: str = "scan.nii", volume: Volume | None = None, **kwargs) -> Path:
    return write_nifti(volume or chest(), tmp / name, **kwargs)


def put(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` and return the path (builders return paths, never byte counts)."""
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def made(path: Path, action) -> Path:
    """Run ``action(path)`` (mkdir, mkfifo, ...) and return the path."""
    action(path)
    return path


def patch(path: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))
    return path


def f32(*values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def i16(*values) -> bytes:
    return np.asarray(values, "<i2").tobytes()


# NIfTI-1 header offsets
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, SCL_SLOPE, SCL_INTER = 40, 70, 72, 76, 108, 112, 116
QFORM_CODE, SFORM_CODE, QUATERN, SROW_X, MAGIC = 252, 254, 256, 280, 344


# ----------------------------------------------------------------------------- DICOM: header field mutations

_DICOM_MUTATIONS = {
    "PixelSpacing NaN": dict(PixelSpacing=[NAN, NAN]),
    "PixelSpacing 0\\0": dict(PixelSpacing=[0, 0]),
    "PixelSpacing negative": dict(PixelSpacing=[-0.7, -0.7]),
    "PixelSpacing huge": dict(PixelSpacing=[1e9, 1e9]),
    "PixelSpacing tiny": dict(PixelSpacing=[1e-6, 1e-6]),
    "PixelSpacing one value": dict(PixelSpacing=[0.7]),
    "PixelSpacing absent": dict(PixelSpacing=None),
    "PixelSpacing infinite": dict(PixelSpacing=[INF, 0.7]),
    "ImageOrientationPatient zero": dict(ImageOrientationPatient=[0, 0, 0, 0, 0, 0]),
    "ImageOrientationPatient NaN": dict(ImageOrientationPatient=[NAN] * 6),
    "ImageOrientationPatient parallel": dict(ImageOrientationPatient=[1, 0, 0, 1, 0, 0]),
    "ImageOrientationPatient not unit": dict(ImageOrientationPatient=[2, 0, 0, 0, 2, 0]),
    "ImageOrientationPatient 45 degrees apart": dict(ImageOrientationPatient=[1, 0, 0, 0.7071, 0.7071, 0]),
    "ImageOrientationPatient five values": dict(ImageOrientationPatient=[1, 0, 0, 0, 1]),
    "ImageOrientationPatient absent": dict(ImageOrientationPatient=None),
    "ImageOrientationPatient huge": dict(ImageOrientationPatient=[1e30, 0, 0, 0, 1e30, 0]),
    "ImagePositionPatient NaN": dict(ImagePositionPatient=[NAN, NAN, NAN]),
    "ImagePositionPatient infinite": dict(ImagePositionPatient=[0, 0, INF]),
    "ImagePositionPatient huge": dict(ImagePositionPatient=[1e12, 0, 0]),
    "ImagePositionPatient all the same": dict(ImagePositionPatient=[0, 0, 0]),
    "ImagePositionPatient absent": dict(ImagePositionPatient=None),
    "RescaleSlope NaN": dict(RescaleSlope=NAN),
    "RescaleSlope 0": dict(RescaleSlope=0),
    "RescaleSlope negative": dict(RescaleSlope=-1),
    "RescaleSlope huge": dict(RescaleSlope=1e30),
    "RescaleSlope infinite": dict(RescaleSlope=INF),
    "RescaleSlope absent": dict(RescaleSlope=None),
    "RescaleIntercept NaN": dict(RescaleIntercept=NAN),
    "RescaleIntercept huge": dict(RescaleIntercept=1e30),
    "RescaleIntercept -1e9": dict(RescaleIntercept=-1e9),
    "RescaleIntercept absent": dict(RescaleIntercept=None),
    "SliceThickness 0": dict(SliceThickness=0),
    "SliceThickness negative": dict(SliceThickness=-5),
    "SliceThickness NaN": dict(SliceThickness=NAN),
    "Rows 0": dict(Rows=0),
    "Rows 1": dict(Rows=1),
    "Rows x Columns huge": dict(Rows=60000, Columns=60000),
    "Columns 0": dict(Columns=0),
    "Columns bigger than the pixel data": dict(Columns=64),
    "BitsAllocated 0": dict(BitsAllocated=0),
    "BitsAllocated 7": dict(BitsAllocated=7),
    "BitsAllocated 64": dict(BitsAllocated=64),
    "BitsAllocated 8 of 16-bit data": dict(BitsAllocated=8),
    "BitsStored 0": dict(BitsStored=0),
    "BitsStored 17": dict(BitsStored=17),
    "BitsStored 40": dict(BitsStored=40),
    "PixelRepresentation 2": dict(PixelRepresentation=2),
    "SamplesPerPixel 0": dict(SamplesPerPixel=0),
    "SamplesPerPixel 3": dict(SamplesPerPixel=3),
    "PhotometricInterpretation RGB": dict(PhotometricInterpretation="RGB"),
    "PhotometricInterpretation empty": dict(PhotometricInterpretation=""),
    "PhotometricInterpretation PALETTE COLOR": dict(PhotometricInterpretation="PALETTE COLOR"),
    "Modality empty": dict(Modality=""),
    "Modality with escape codes": dict(Modality="\x1b[31mCT"),
    "NumberOfFrames 0": dict(NumberOfFrames=0),
    "NumberOfFrames 1000": dict(NumberOfFrames=1000),
    "SeriesInstanceUID empty": dict(SeriesInstanceUID=""),
    "SeriesDescription with escape codes": dict(SeriesDescription="\x1b]0;pwned\x07\x1b[2J"),
}
_ONE_SLICE = {
    "one slice: ImagePositionPatient NaN": dict(ImagePositionPatient=[NAN, 0, 0]),
    "one slice: RescaleSlope 0": dict(RescaleSlope=0),
    "one slice: PixelSpacing differs": dict(PixelSpacing=[0.5, 0.5]),
    "one slice: Rows differs": dict(Rows=31),
    "one slice: ImageOrientationPatient differs": dict(ImageOrientationPatient=[0, 1, 0, 0, 0, -1]),
    "one slice: other SeriesInstanceUID": dict(SeriesInstanceUID="1.2.3.4.5"),
}
#: Mutations whose outcome is part of the contract (the rest may go either way, by the rule).
_DICOM_EXPECT = {
    "PixelSpacing 0\\0": ("error", "PixelSpacing 0\\0 is not a voxel size in mm"),
    "PixelSpacing NaN": ("error", "PixelSpacing nan\\nan is not a voxel size"),
    "PixelSpacing negative": ("error", "PixelSpacing -0.7\\-0.7 is not a voxel size"),
    "PixelSpacing huge": ("error", "PixelSpacing 1e+09\\1e+09 is not a voxel size"),
    "PixelSpacing absent": ("ok", "no PixelSpacing; assuming 1 mm"),
    "ImageOrientationPatient zero": ("error", "ImageOrientationPatient 0\\0\\0\\0\\0\\0 holds a zero direction"),
    "ImageOrientationPatient NaN": ("error", "is not six finite direction cosines"),
    "ImageOrientationPatient parallel": ("error", "not orthogonal (0.0° apart)"),
    "ImageOrientationPatient not unit": ("ok", "is not unit length (|row| 2, |column| 2); normalised"),
    "ImageOrientationPatient 45 degrees apart": ("error", "not orthogonal (45.0° apart)"),
    "ImagePositionPatient NaN": ("error", "ImagePositionPatient nan\\nan\\nan is not a position in mm"),
    "ImagePositionPatient huge": ("error", "ImagePositionPatient 1e+12\\0\\0 is not a position in mm"),
    "RescaleSlope NaN": ("error", "RescaleSlope/RescaleIntercept nan/-1024 cannot map stored values to HU"),
    "RescaleSlope 0": ("error", "RescaleSlope/RescaleIntercept 0/-1024 cannot map"),
    "RescaleSlope huge": ("error", "RescaleSlope/RescaleIntercept 1e+30/-1024 cannot map"),
    "RescaleIntercept huge": ("error", "cannot map stored values to HU"),
    "Rows x Columns huge": ("error", ()),
    "Modality with escape codes": ("error", "modality \\x1b[31MCT, not CT"),
    "one slice: RescaleSlope 0": ("error", "0001-00001.dcm: RescaleSlope/RescaleIntercept 0/-1024 cannot map"),
    "one slice: ImagePositionPatient NaN": ("error", "0001-00001.dcm: ImagePositionPatient nan\\0\\0"),
}


def _dicom_case(name: str, fields: dict, which: str) -> None:
    expect, fragments = _DICOM_EXPECT.get(name, ("either", ()))

    @case(f"DICOM {name}", "dicom", expect, fragments, study=True)
    def build(tmp, fields=fields, which=which):
        return study_runs(mutate(dicom(tmp), which, **fields))


for _name, _fields in _DICOM_MUTATIONS.items():
    _dicom_case(_name, _fields, "all")
for _name, _fields in _ONE_SLICE.items():
    _dicom_case(_name, _fields, "first")


@case("DICOM NumberOfFrames 2.9e9 with BitsAllocated 0", "dicom", "error", "NumberOfFrames", study=True)
def _(tmp):  # found by the fuzzer: one header per declared frame never ended
    folder = raw_element(dicom(tmp), (0x0028, 0x0008), "IS", b"2917434420")
    return study_runs(mutate(folder, BitsAllocated=0))


@case("DICOM SamplesPerPixel 'inf' with the wrong VR (IS)", "dicom", study=True)
def _(tmp):  # found by the fuzzer: int(float("inf")) raised OverflowError in the header pass
    return study_runs(raw_element(dicom(tmp), (0x0028, 0x0002), "IS", b"inf "))


@case("DICOM PixelSpacing as text 'abc'", "dicom", study=True)
def _(tmp):
    return study_runs(raw_element(dicom(tmp), (0x0028, 0x0030), "DS", b"abc\\def "))


@case("DICOM PixelSpacing with the wrong VR (US)", "dicom", study=True)
def _(tmp):
    return study_runs(raw_element(dicom(tmp), (0x0028, 0x0030), "US", b"\x01\x00\x01\x00"))


@case("DICOM ImagePositionPatient as garbage bytes", "dicom", study=True)
def _(tmp):
    return study_runs(raw_element(dicom(tmp), (0x0020, 0x0032), "DS", b"\xff\xfe\x00\x01zz"))


@case("DICOM RescaleSlope as text 'abc'", "dicom", study=True)
def _(tmp):
    return study_runs(raw_element(dicom(tmp), (0x0028, 0x1053), "DS", b"abc "))


@case("DICOM Rows with the wrong VR (DS)", "dicom", study=True)
def _(tmp):
    return study_runs(raw_element(dicom(tmp), (0x0028, 0x0010), "DS", b"32.5"))


@case("DICOM sequences nested 5000 deep in one slice's header", "dicom", "either", study=True)
def _(tmp):  # the plain header reader leaves them to pydicom, whose reader recursed until RecursionError
    folder = dicom(tmp)
    first = sorted(folder.glob("*.dcm"))[0]
    data = first.read_bytes()
    pixel = data.index(b"\xe0\x7f\x10\x00")
    opening = b"\x09\x00\x10\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    put(first, data[:pixel] + opening * 5000 + closing * 5000 + data[pixel:])
    return study_runs(folder)


@case("DICOM padding -3024 outside the body is kept", "dicom", "ok", study=True)
def _(tmp):
    vol = chest()
    arr = vol.array.copy()
    arr[:, :3, :] = -3024
    return study_runs(dicom(tmp, volume=vol.replace(array=arr), intercept=-3024))


@case("DICOM padding -2048 with PixelPaddingValue is kept", "dicom", "ok", study=True)
def _(tmp):
    vol = chest()
    arr = vol.array.copy()
    arr[:, -2:, :] = -2048
    folder = dicom(tmp, volume=vol.replace(array=arr), intercept=-2048)
    return study_runs(raw_element(folder, (0x0028, 0x0120), "US", b"\x00\x00"))


@case("DICOM extended-HU metal (up to 30000 HU) is kept", "dicom", "ok", study=True)
def _(tmp):
    vol = chest()
    arr = vol.array.astype(np.int32)
    arr[8, 14:18, 14:18] = 30000
    return study_runs(dicom(tmp, volume=vol.replace(array=arr.astype(np.int32)), intercept=-1024))


@case("DICOM small field of view is noted, not refused", "dicom", "ok", "small field of view", study=True)
def _(tmp):
    return study_runs(dicom(tmp, volume=chest(shape=(16, 32, 32), spacing=(2.5, 1.0, 1.0))))


@case("DICOM single slice", "dicom", "either", study=True)
def _(tmp):
    return study_runs(dicom(tmp, volume=chest(shape=(1, 32, 32))))


@case("DICOM 2 x 2 voxels", "dicom", "either", study=True)
def _(tmp):
    return study_runs(dicom(tmp, volume=chest(shape=(16, 2, 2), spacing=(2.5, 30.0, 30.0))))


@case("DICOM 1 x 1 in-plane", "dicom", "error", "too small for a CT image", study=True)
def _(tmp):
    return study_runs(dicom(tmp, volume=chest(shape=(16, 1, 1), spacing=(2.5, 50.0, 50.0))))


@case("DICOM one file truncated", "dicom", "either", study=True)
def _(tmp):
    folder = dicom(tmp)
    f = sorted(folder.glob("*.dcm"))[5]
    f.write_bytes(f.read_bytes()[:-100])
    return study_runs(folder)


@case("DICOM every file truncated in its header", "dicom", "error", study=True)
def _(tmp):
    folder = dicom(tmp)
    for f in folder.glob("*.dcm"):
        f.write_bytes(f.read_bytes()[:200])
    return study_runs(folder)


@case("DICOM a FIFO named .dcm among the slices", "dicom", "ok", study=True)
def _(tmp):
    folder = dicom(tmp)
    os.mkfifo(folder / "9999.dcm")
    return study_runs(folder)


@case("DICOM a symlink loop inside the folder", "dicom", "ok", study=True)
def _(tmp):
    folder = dicom(tmp)
    os.symlink(folder, folder / "loop")
    os.symlink(folder / "b", folder / "a.dcm")
    os.symlink(folder / "a.dcm", folder / "b")
    return study_runs(folder)


@case("DICOM 40 MB of zeros named .dcm", "dicom", "error", study=True)
def _(tmp):
    (tmp / "zeros").mkdir()
    with open(tmp / "zeros" / "big.dcm", "wb") as fh:
        fh.truncate(40 << 20)
    return study_runs(tmp / "zeros")


# ----------------------------------------------------------------------------- NIfTI: header mutations

_NIFTI_PATCHES = {
    "dim[0] 0": (DIM, i16(0)),
    "dim[0] 8": (DIM, i16(8)),
    "dim[0] -1": (DIM, i16(-1)),
    "dim[1] 0": (DIM + 2, i16(0)),
    "dim[1] -5": (DIM + 2, i16(-5)),
    "dim[3] 30000 (data too short)": (DIM + 6, i16(30000)),
    "datatype 0": (DATATYPE, i16(0)),
    "datatype complex": (DATATYPE, i16(32)),
    "datatype RGB": (DATATYPE, i16(128)),
    "datatype 9999": (DATATYPE, i16(9999)),
    "bitpix wrong": (BITPIX, i16(3)),
    "pixdim zero with qform": (PIXDIM + 4, f32(0, 0, 0)),
    "pixdim NaN with qform": (PIXDIM + 4, f32(NAN, NAN, NAN)),
    "pixdim negative with qform": (PIXDIM + 4, f32(-1.4, -1.4, -2.5)),
    "pixdim huge with qform": (PIXDIM + 4, f32(1e9, 1e9, 1e9)),
    "vox_offset 0": (VOX_OFFSET, f32(0)),
    "vox_offset beyond the file": (VOX_OFFSET, f32(1e9)),
    "vox_offset NaN": (VOX_OFFSET, f32(NAN)),
    "vox_offset infinite": (VOX_OFFSET, f32(INF)),
    "scl_slope NaN": (SCL_SLOPE, f32(NAN)),
    "scl_slope 0": (SCL_SLOPE, f32(0)),
    "scl_slope infinite": (SCL_SLOPE, f32(INF)),
    "scl_slope huge": (SCL_SLOPE, f32(1e30)),
    "scl_inter huge": (SCL_SLOPE, f32(1, 1e30)),
    "scl_inter NaN": (SCL_SLOPE, f32(1, NAN)),
    "quatern NaN": (QUATERN, f32(NAN, NAN, NAN, NAN, NAN, NAN)),
    "quatern huge": (QUATERN, f32(1e30, 1e30, 1e30, 0, 0, 0)),
    "sform rows zero": (SROW_X, f32(*[0] * 12)),
    "sform rows NaN": (SROW_X, f32(*[NAN] * 12)),
    "sform rows huge": (SROW_X, f32(1e30, 0, 0, 0, 0, 1e30, 0, 0, 0, 0, 1e30, 0)),
    "sform rows parallel": (SROW_X, f32(1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0)),
    "magic wrong": (MAGIC, b"xx1\x00"),
}
_NIFTI_EXPECT = {
    "vox_offset infinite": ("error", "vox_offset inf is not a byte offset"),  # nibabel: OverflowError (fuzz)
    "pixdim zero with qform": ("error", "pixdim[1,2,3] 0\\0\\0 is not a voxel size in mm"),
    "pixdim NaN with qform": ("error", "pixdim[1,2,3] nan\\nan\\nan is not a voxel size"),
    "pixdim huge with qform": ("error", "is not a voxel size"),
    "sform rows zero": ("error", "affine is degenerate"),
    "sform rows NaN": ("error", "affine is degenerate"),
    "sform rows huge": ("error", "pixdim / affine 1e+30\\1e+30\\1e+30 is not a voxel size"),
    "sform rows parallel": ("error", "affine is degenerate"),
    "scl_slope huge": ("error", "scl_slope/scl_inter 1e+30/0 cannot map stored values to HU"),
    "scl_inter huge": ("error", "scl_slope/scl_inter 1/1e+30 cannot map stored values to HU"),
    "datatype complex": ("error", ()),
    "magic wrong": ("error", "magic"),
}


def _nifti_case(name: str, offset: int, data: bytes, qform_only: bool) -> None:
    expect, fragments = _NIFTI_EXPECT.get(name, ("either", ()))

    @case(f"NIfTI {name}", "nifti", expect, fragments, study=True)
    def build(tmp, offset=offset, data=data, qform_only=qform_only):
        path = nifti(tmp)
        if qform_only:
            patch(path, SFORM_CODE, i16(0))
        return study_runs(patch(path, offset, data))


for _name, (_offset, _data) in _NIFTI_PATCHES.items():
    _nifti_case(_name, _offset, _data, qform_only="qform" in _name or "quatern" in _name)


@case("NIfTI no sform or qform (orientation unknown)", "nifti", "ok", "orientation unknown", study=True)
def _(tmp):
    path = nifti(tmp)
    return study_runs(patch(path, QFORM_CODE, i16(0, 0)))


@case("NIfTI 1 x 1 x 1", "nifti", "error", "is 1x1x1 voxels: too small for a CT image", study=True)
def _(tmp):
    return study_runs(nifti(tmp, volume=Volume(np.zeros((1, 1, 1), np.int16), (1.0, 1.0, 1.0))))


@case("NIfTI partly NaN floats", "nifti", "ok", "voxels are NaN or infinite; set to -1024 HU", study=True)
def _(tmp):
    arr = chest().array.astype(np.float32)
    arr[3, :4, :4] = np.nan
    return study_runs(nifti(tmp, volume=Volume(arr, (2.5, 1.4, 1.4)), dtype="float32"))


@case("NIfTI all infinite", "nifti", "error", "holds no finite voxel values", study=True)
def _(tmp):
    return study_runs(nifti(tmp, volume=Volume(np.full((16, 32, 32), np.inf, np.float32), (2.5, 1.4, 1.4)),
                            dtype="float32"))


@case("NIfTI values 1e20 as float", "nifti", "error", "not a CT", study=True)
def _(tmp):
    return study_runs(nifti(tmp, volume=Volume(np.full((16, 32, 32), 1e20, np.float32), (2.5, 1.4, 1.4)),
                            dtype="float32"))


@case("NIfTI unrescaled (no air)", "nifti", "ok", "look unrescaled", study=True)
def _(tmp):
    vol = chest(shape=(16, 128, 128), spacing=(2.5, 1.4, 1.4))
    return study_runs(nifti(tmp, volume=vol.replace(array=(vol.array + 1024).astype(np.int16))))


@case("NIfTI gzip bomb (header promises 64 GiB)", "nifti", "error", "GiB of voxel data", study=True)
def _(tmp):
    header = bytearray(nifti(tmp, "small.nii").read_bytes()[:352])
    header[DIM:DIM + 8] = i16(3, 4096, 4096, 2048)
    path = tmp / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(bytes(header))
        zeros = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros behind it, 64 KiB on disk
            fh.write(zeros)
    (tmp / "small.nii").unlink()
    return study_runs(path)


@case("NIfTI small gzip whose header promises 7 GB", "nifti", "error", "cannot hold them", study=True)
def _(tmp):  # found by the fuzzer: nibabel allocated the whole array (10 GB) before reading 240 bytes
    header = bytearray(nifti(tmp, "small.nii").read_bytes()[:352])
    header[DIM:DIM + 8] = i16(3, 900, 1900, 2000)
    path = tmp / "promise.nii.gz"
    path.write_bytes(gzip.compress(bytes(header) + bytes(200)))
    (tmp / "small.nii").unlink()
    return study_runs(path)


@case("NIfTI gzip of 64 MiB of zeros named .nii.gz", "nifti", "error", study=True)
def _(tmp):
    path = tmp / "zeros.nii.gz"
    with open(path, "wb") as fh:
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        for _ in range(64):
            fh.write(c.compress(zeros))
        fh.write(c.flush())
    return study_runs(path)


@case("NIfTI concatenated gzip members", "nifti", "either", study=True)
def _(tmp):
    path = nifti(tmp, "a.nii")
    data = path.read_bytes()
    half = len(data) // 2
    out = tmp / "multi.nii.gz"
    out.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    path.unlink()
    return study_runs(out)


@case("NIfTI header only (.hdr without .img)", "nifti", "error", study=True)
def _(tmp):
    path = nifti(tmp)
    hdr = tmp / "pair.hdr"
    raw = bytearray(path.read_bytes()[:348])
    raw[MAGIC:MAGIC + 4] = b"ni1\x00"
    hdr.write_bytes(bytes(raw))
    path.unlink()
    return study_runs(hdr)


# ----------------------------------------------------------------------------- audio

def audio_runs(tmp: Path, wav: Path) -> dict:
    ct = dicom(tmp, "ct")
    return {"runs": [["rank", "--ct", ct, "--audio", wav], ["search", "--audio", wav, "--library", tmp / "lib"]],
            "where": wav}


def _wave(tmp: Path, name: str, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path = tmp / name
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def _audio_case(name: str, expect: str, fragments, make) -> None:
    @case(f"audio {name}", "audio", expect, fragments)
    def build(tmp, make=make):
        return audio_runs(tmp, make(tmp))


_rng = np.random.default_rng(5)
_AUDIO = {
    "60 s of digital silence": ("error", "no speech heard in", lambda t: _wave(t, "silence.wav", np.zeros(60 * 16000))),
    "10 s of white noise": ("error", "no speech heard in", lambda t: _wave(t, "noise.wav", 0.2 * _rng.standard_normal(160000))),
    "50 Hz hum": ("error", "no speech heard in", lambda t: _wave(t, "hum.wav", 0.3 * np.sin(np.arange(160000) * 2 * np.pi * 50 / 16000))),
    "a 50 ms click": ("error", "no speech heard in", lambda t: _wave(t, "click.wav", 0.5 * _rng.standard_normal(800))),
    "one sample": ("error", (), lambda t: _wave(t, "one.wav", np.array([0.5]))),
    "0.3 s of speech": ("error", "too little speech in", lambda t: _wave(t, "short.wav", soundfile.read(SPEECH)[0][17000:17000 + 4800])),
    "zero-byte .wav": ("error", "audio file is empty (0 bytes)", lambda t: put(t / "empty.wav", b"")),
    "header only, no samples": ("error", "holds no samples", lambda t: _wave(t, "nosamples.wav", np.zeros(0))),
    "text named .wav": ("error", "cannot decode audio", lambda t: put(t / "notes.wav", "hello\n")),
    "PNG named .wav": ("error", "cannot decode audio", lambda t: put(t / "img.wav", b"\x89PNG\r\n\x1a\n" + bytes(100))),
    "truncated data chunk": ("either", (), lambda t: _truncated_wav(t)),
    "data size says 4 GiB": ("either", (), lambda t: _huge_size_wav(t)),
    "sample rate 0 in the header": ("error", (), lambda t: _rate_wav(t, 0)),
    "sample rate 1 Hz": ("error", (), lambda t: _rate_wav(t, 1)),
    "float WAV with NaN": ("error", "NaN or infinite samples", lambda t: _wave(t, "nan.wav", np.full(16000, np.nan, np.float32), subtype="FLOAT")),
    "6-channel noise": ("error", "no speech heard in", lambda t: _wave(t, "six.wav", 0.1 * _rng.standard_normal((32000, 6)))),
    "8 kHz silence": ("error", "no speech heard in", lambda t: _wave(t, "eight.wav", np.zeros(8000 * 5), rate=8000)),
    "a folder named .wav": ("error", "is a folder", lambda t: made(t / "dir.wav", Path.mkdir)),
    "a FIFO named .wav": ("error", (), lambda t: made(t / "pipe.wav", os.mkfifo)),
    "missing file": ("error", "audio file not found", lambda t: t / "nope.wav"),
}


def _truncated_wav(tmp: Path) -> Path:
    path = _wave(tmp, "cut.wav", soundfile.read(SPEECH)[0][:32000])
    path.write_bytes(path.read_bytes()[:30000])
    return path


def _huge_size_wav(tmp: Path) -> Path:
    path = _wave(tmp, "huge.wav", soundfile.read(SPEECH)[0][:32000])
    return patch(path, 40, np.asarray([0xFFFFFFF0], "<u4").tobytes())


def _rate_wav(tmp: Path, rate: int) -> Path:
    path = _wave(tmp, f"rate{rate}.wav", 0.1 * _rng.standard_normal(16000))
    return patch(path, 24, np.asarray([rate, rate * 2], "<u4").tobytes())


for _name, (_expect, _fragments, _make) in _AUDIO.items():
    _audio_case(_name, _expect, _fragments, _make)


# ----------------------------------------------------------------------------- bundles

def bundle_runs(path: Path) -> dict:
    return {"runs": [["bundle-info", path, "--no-backbone"]], "where": path}


def _copy_bundle(tmp: Path) -> Path:
    from .tiny_bundle import tiny_bundle_path

    dest = tmp / "bundle"
    shutil.copytree(tiny_bundle_path(), dest)
    return dest


def _edit_manifest(tmp: Path, change) -> Path:
    dest = _copy_bundle(tmp)
    manifest = json.loads((dest / "bundle.json").read_text())
    change(manifest)
    (dest / "bundle.json").write_text(json.dumps(manifest))
    return dest


_BUNDLES = {
    "missing folder": ("error", "does not exist", lambda t: t / "nope"),
    "empty folder": ("error", (), lambda t: made(t / "empty", Path.mkdir)),
    "bundle.json not JSON": ("error", (), lambda t: _replace_file(_copy_bundle(t), "bundle.json", b"{not json")),
    "bundle.json a list": ("error", (), lambda t: _replace_file(_copy_bundle(t), "bundle.json", b"[1, 2]")),
    "bundle.json empty": ("error", (), lambda t: _replace_file(_copy_bundle(t), "bundle.json", b"")),
    "schema 999": ("error", (), lambda t: _edit_manifest(t, lambda m: m.update(schema=999))),
    "labels missing": ("error", (), lambda t: _edit_manifest(t, lambda m: m.pop("labels"))),
    "tensor file tampered": ("error", "sha256", lambda t: _tamper(_copy_bundle(t))),
    "tensor file truncated": ("error", (), lambda t: _truncate_tensor(_copy_bundle(t))),
    "bundle.json a folder": ("error", (), lambda t: _json_folder(_copy_bundle(t))),
    "name with newline and escape codes": ("ok", "evil\\x0a\\x1b[2J", lambda t: _edit_manifest(t, lambda m: m.update(name="evil\n\x1b[2Jname"))),
    "provenance with bidi override": ("ok", "\\u202e", lambda t: _edit_manifest(t, lambda m: m["provenance"].update(note="\u202etxt.exe"))),
}


def _replace_file(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder


def _tamper(folder: Path) -> Path:
    f = sorted(folder.glob("*.safetensors"))[0]
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    return folder


def _truncate_tensor(folder: Path) -> Path:
    f = sorted(folder.glob("*.safetensors"))[0]
    f.write_bytes(f.read_bytes()[:50])
    return folder


def _json_folder(folder: Path) -> Path:
    (folder / "bundle.json").unlink()
    (folder / "bundle.json").mkdir()
    return folder


def _bundle_case(name, expect, fragments, make):
    @case(f"bundle {name}", "bundle", expect, fragments)
    def build(tmp, make=make):
        return bundle_runs(make(tmp))


for _name, (_expect, _fragments, _make) in _BUNDLES.items():
    _bundle_case(_name, _expect, _fragments, _make)


# ----------------------------------------------------------------------------- libraries

def library_runs(tmp: Path, lib) -> dict:
    study = dicom(tmp, "study")
    # a library URL's password is never shown: the error names the URL without it
    where = re.sub(r"^(\w+://[^:/@]+):[^@/]*@", r"\1@", lib) if isinstance(lib, str) else lib
    return {"runs": [["index", "list", "--library", lib], ["index", "add", study, "--library", lib],
                     ["search", "--ct", study, "--library", lib]], "where": where}


def _foreign_sqlite(tmp: Path) -> Path:
    (tmp / "lib").mkdir()
    conn = sqlite3.connect(str(tmp / "lib" / "library.sqlite"))
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    return tmp / "lib"


def _garbage_sqlite(tmp: Path, data: bytes) -> Path:
    (tmp / "lib").mkdir()
    (tmp / "lib" / "library.sqlite").write_bytes(data)
    return tmp / "lib"


def _truncated_library(tmp: Path) -> Path:
    from engine.library import Library

    lib = Library(tmp / "lib", bundle_hash="other", dim=64)
    lib.close()
    db = tmp / "lib" / "library.sqlite"
    db.write_bytes(db.read_bytes()[:1000])
    return tmp / "lib"


def _corrupt_vectors(tmp: Path) -> Path:
    from engine.library.store import connect
    from engine.weights.bundle import load_bundle

    from .tiny_bundle import tiny_bundle_path

    b = load_bundle(tiny_bundle_path(), check_hashes=False, check_backbone=False)
    from engine.library import Library

    lib = Library(tmp / "lib", bundle_hash=b.hash, dim=b.manifest.space_dim)
    lib.add_study(chest(), np.ones(b.manifest.space_dim, np.float32))
    lib.close()
    conn = connect(tmp / "lib" / "library.sqlite")
    conn.execute("UPDATE vectors SET vector = x'0011'")
    conn.close()
    return tmp / "lib"


def _other_bundle_library(tmp: Path) -> Path:
    from engine.library import Library

    lib = Library(tmp / "lib", bundle_hash="another-bundle", dim=64)
    lib.add_study(chest(), np.ones(64, np.float32))
    lib.close()
    return tmp / "lib"


def _lib_case(name, expect, fragments, make):
    @case(f"library {name}", "library", expect, fragments)
    def build(tmp, make=make):
        return library_runs(tmp, make(tmp))


_LIBRARIES = {
    "PostgreSQL URL with a password": ("error", "the library URL holds a password",
                                       lambda t: "postgresql://user:secret@db/speechct"),
    "PostgreSQL down": ("error", "cannot open the study library", lambda t: "postgresql://user@127.0.0.1:1/speechct"),
    "other URL": ("error", "must be a local folder", lambda t: "https://example.org/lib"),
    "a file, not a folder": ("error", "cannot open the study library", lambda t: put(t / "f", "x")),
    "foreign SQLite file": ("error", "not a SpeechCT library (tables: invoices)", _foreign_sqlite),
    "garbage bytes": ("error", "cannot open the study library", lambda t: _garbage_sqlite(t, b"garbage" * 1000)),
    "zero-byte file": ("ok", (), lambda t: _garbage_sqlite(t, b"")),
    "truncated database": ("error", (), _truncated_library),
    "corrupt vectors": ("error", (), _corrupt_vectors),
    "made with another bundle": ("error", "library was built with model bundle", _other_bundle_library),
    "library.sqlite is a folder": ("error", "cannot open the study library", lambda t: made(t / "lib" / "library.sqlite", lambda p: p.mkdir(parents=True)).parent),
}
for _name, (_expect, _fragments, _make) in _LIBRARIES.items():
    _lib_case(_name, _expect, _fragments, _make)


# ----------------------------------------------------------------------------- paths

def _paths_case(name, expect, fragments, make):
    @case(f"path {name}", "path", expect, fragments)
    def build(tmp, make=make):
        path = make(tmp)
        return {"runs": [["info", path], ["rank", "--ct", path], ["index", "add", path, "--library", tmp / "lib"]],
                "where": path}


def _symlink_loop(tmp: Path) -> Path:
    os.symlink(tmp / "b", tmp / "a")
    os.symlink(tmp / "a", tmp / "b")
    return tmp / "a"


def _socket_file(tmp: Path) -> Path:
    path = tmp / "sock.dcm"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


def _non_utf8(tmp: Path) -> Path:
    folder = Path(os.fsdecode(os.fsencode(str(tmp)) + b"/\xff\xfe-study"))
    write_dicom_series(chest(), folder)
    return folder


_PATHS = {
    "missing": ("error", "does not exist", lambda t: t / "missing"),
    "empty folder": ("error", "folder is empty", lambda t: made(t / "e", Path.mkdir)),
    "symlink loop": ("error", (), _symlink_loop),
    "broken symlink": ("error", (), lambda t: made(t / "link", lambda p: os.symlink(p.parent / "gone", p))),
    "FIFO named .dcm": ("error", "is not a regular file", lambda t: made(t / "p.dcm", os.mkfifo)),
    "FIFO named .nii.gz": ("error", "is not a regular file", lambda t: made(t / "p.nii.gz", os.mkfifo)),
    "socket named .dcm": ("error", "is not a regular file", _socket_file),
    "/dev/zero": ("error", "is not a regular file", lambda t: Path("/dev/zero")),
    "name with a newline": ("either", (), lambda t: (dicom(t, "new\nline"))),
    "name with escape codes": ("either", (), lambda t: (dicom(t, "\x1b[31mred"))),
    "name that is not UTF-8": ("either", (), _non_utf8),
    "name of 255 bytes": ("either", (), lambda t: dicom(t, "x" * 255)),
    "a file named .dcm that is a folder": ("error", (), lambda t: made(t / "d.dcm", Path.mkdir)),
    "folder of 500 empty files": ("error", (), lambda t: _empty_files(t)),
    "folder of files without read permission": ("either", (), lambda t: _unreadable(t)),
}


def _empty_files(tmp: Path) -> Path:
    (tmp / "many").mkdir()
    for i in range(500):
        (tmp / "many" / f"{i:04d}.dcm").write_bytes(b"")
    return tmp / "many"


def _unreadable(tmp: Path) -> Path:
    folder = dicom(tmp)
    for f in folder.glob("*.dcm"):
        f.chmod(0)
    return folder


for _name, (_expect, _fragments, _make) in _PATHS.items():
    _paths_case(_name, _expect, _fragments, _make)


# ----------------------------------------------------------------------------- index add of a tree

@case("tree: good and bad studies mixed", "path", "error", "2 of 4 studies could not be added")
def _(tmp):
    tree = tmp / "tree"
    dicom(tree, "good1", seed=1)
    dicom(tree, "good2", seed=2)
    mutate(dicom(tree, "bad1", seed=3), PixelSpacing=[0, 0])
    mutate(dicom(tree, "bad2", seed=4), ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    return {"runs": [["index", "add", tree, "--library", tmp / "lib"]], "where": tree}
