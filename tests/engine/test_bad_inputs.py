"""Malformed studies: `speechct info` says what is wrong in one line and exits 2, never a traceback.

Each case is built in tmp_path and asserts its own message fragment. The fast tests call
``engine.cli.main`` in-process (an escaping exception would fail the test); the slow test runs
every case through a real ``speechct info`` subprocess and checks stderr for tracebacks.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import engine.cli
from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume


def _volume() -> Volume:
    arr = (np.arange(3 * 8 * 8).reshape(3, 8, 8) * 5 - 1000).astype(np.int16)
    return Volume(arr, (2.0, 0.7, 0.7))


def _dicom_folder(tmp: Path, **kwargs) -> list[Path]:
    return write_dicom_series(_volume(), tmp / "series", **kwargs)


# ----------------------------------------------------------------------------- the corpus
# Each builder makes its input under tmp and returns the `speechct info` arguments.


def missing_path(tmp):
    return [str(tmp / "no-such-study")]


def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return [str(tmp / "empty")]


def folder_of_text_files(tmp):
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("findings: none\n")
    (folder / "b.csv").write_text("x,y\n1,2\n")
    return [str(folder)]


def zero_byte_dcm(tmp):
    (tmp / "x.dcm").write_bytes(b"")
    return [str(tmp / "x.dcm")]


def truncated_dicom(tmp):
    first = _dicom_folder(tmp)[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) - 40])  # cut inside the pixel data
    return [str(first)]


def dicom_without_pixel_data(tmp):
    first = _dicom_folder(tmp)[0]
    ds = pydicom.dcmread(first)
    del ds.PixelData
    # Something after where the pixels would be, so the file visibly goes on without them
    # (a header that simply ends is reported as truncated instead, see the next case).
    ds.add_new((0xFFFC, 0xFFFC), "OB", bytes(8))  # Data Set Trailing Padding
    ds.save_as(first)
    return [str(first)]


def dicom_cut_inside_header(tmp):
    first = _dicom_folder(tmp)[0]
    first.write_bytes(first.read_bytes()[:200])
    return [str(first)]


def structured_report(tmp):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "SR"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.ValueType = "CONTAINER"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp / "report.dcm", enforce_file_format=True)
    return [str(tmp / "report.dcm")]


def mr_series(tmp):
    _dicom_folder(tmp, modality="MR")
    return [str(tmp / "series")]


def us_series(tmp):
    _dicom_folder(tmp, modality="US")
    return [str(tmp / "series")]


def png_renamed_dcm(tmp):
    (tmp / "image.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return [str(tmp / "image.dcm")]


def truncated_nii_gz(tmp):
    path = write_nifti(_volume(), tmp / "cut.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return [str(path)]


def truncated_plain_nii(tmp):
    path = write_nifti(_volume(), tmp / "cut.nii")
    path.write_bytes(path.read_bytes()[:400])
    return [str(path)]


def wrong_magic_nii(tmp):
    path = write_nifti(_volume(), tmp / "magic.nii")
    data = bytearray(path.read_bytes())
    data[344:348] = b"xyz\x00"
    path.write_bytes(bytes(data))
    return [str(path)]


def short_nifti_header(tmp):
    (tmp / "short.nii").write_bytes((348).to_bytes(4, "little") + bytes(96))
    return [str(tmp / "short.nii")]


def gzip_of_text_named_nii_gz(tmp):
    (tmp / "fake.nii.gz").write_bytes(gzip.compress(b"not an image\n" * 50))
    return [str(tmp / "fake.nii.gz")]


def two_d_nifti(tmp):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(tmp / "flat.nii"))
    return [str(tmp / "flat.nii")]


def five_d_nifti(tmp):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 1, 3), np.int16), np.eye(4)), str(tmp / "five.nii.gz"))
    return [str(tmp / "five.nii.gz")]


def zero_size_nifti(tmp):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 0, 4))
    with open(tmp / "none.nii", "wb") as f:
        header.write_to(f)
    return [str(tmp / "none.nii")]


def nan_nifti(tmp):
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(tmp / "nan.nii"))
    return [str(tmp / "nan.nii")]


def complex_nifti(tmp):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), np.eye(4)), str(tmp / "complex.nii"))
    return [str(tmp / "complex.nii")]


def degenerate_affine_nifti(tmp):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.int16)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]
    with open(tmp / "flat-axis.nii", "wb") as f:
        header.write_to(f)
        f.write(np.zeros(64, np.int16).tobytes())
    return [str(tmp / "flat-axis.nii")]


def absurd_dimensions_nifti(tmp):
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    with gzip.open(tmp / "huge.nii.gz", "wb") as f:
        header.write_to(f)
        f.write(bytes(100))
    return [str(tmp / "huge.nii.gz")]


def named_pipe(tmp):
    # Stands in for "no read permission", which root (CI) ignores: a path that must not be opened.
    os.mkfifo(tmp / "pipe.dcm")
    return [str(tmp / "pipe.dcm")]


def unknown_series_uid(tmp):
    _dicom_folder(tmp)
    return [str(tmp / "series"), "--series", "1.2.3.999"]


def unknown_series_for_nifti(tmp):
    path = write_nifti(_volume(), tmp / "one.nii.gz")
    return [str(path), "--series", "other.nii.gz"]


#: name → (builder, fragment or fragments that must all appear in the one-line error)
CASES: dict[str, tuple[Callable[[Path], list[str]], str | tuple[str, ...]]] = {
    "missing path": (missing_path, "no-such-study: does not exist"),
    "empty folder": (empty_folder, "folder is empty"),
    "folder of text files": (folder_of_text_files, "no DICOM or NIfTI files in the folder (2 file(s), e.g. a.txt: a text file)"),
    "zero-byte .dcm": (zero_byte_dcm, "x.dcm: file is empty (0 bytes)"),
    "truncated DICOM": (truncated_dicom, "truncated pixel data"),
    # A complete CT header without PixelData: the reader reports it as a header that ends before any
    # pixel data (it cannot tell it from a file cut exactly there); the file, the missing pixel data
    # and the SOP class are what matter.
    "DICOM without pixel data": (dicom_without_pixel_data, ("0001-00001.dcm: ", "pixel data", "(CT Image Storage)")),
    "DICOM cut inside its header": (dicom_cut_inside_header, ("0001-00001.dcm: ", "truncated file", "header")),
    "structured report": (structured_report, "not an image: Basic Text SR Storage"),
    "MR series": (mr_series, "modality MR, not CT"),
    "US series": (us_series, "modality US, not CT"),
    "PNG renamed .dcm": (png_renamed_dcm, "image.dcm: not a DICOM or NIfTI file (looks like a PNG image)"),
    "truncated .nii.gz": (truncated_nii_gz, "cut.nii.gz: gzip stream is truncated or corrupt"),
    "truncated .nii": (truncated_plain_nii, "image data is truncated (400 bytes on disk, the header needs"),
    "wrong-magic .nii": (wrong_magic_nii, "the magic is b'xyz\\x00'"),
    "short NIfTI header": (short_nifti_header, "NIfTI header is truncated (100 bytes)"),
    "gzip of text as .nii.gz": (gzip_of_text_named_nii_gz, "a gzip file that holds no NIfTI header"),
    "2-D NIfTI": (two_d_nifti, "is 2-D (shape (8, 8)); a CT volume needs 3 dimensions"),
    "5-D NIfTI": (five_d_nifti, "is 5-D (shape (4, 4, 4, 1, 3))"),
    "zero-size NIfTI": (zero_size_nifti, "holds no voxels (shape (4, 0, 4))"),
    "NaN NIfTI": (nan_nifti, "holds no finite voxel values (all NaN or infinite)"),
    "complex NIfTI": (complex_nifti, "voxel type complex64 is not a scalar number type"),
    "degenerate affine": (degenerate_affine_nifti, "affine is degenerate"),
    "absurd dimensions": (absurd_dimensions_nifti, "GiB of voxel data (shape (30000, 30000, 30000)); the header is corrupt"),
    "named pipe": (named_pipe, "pipe.dcm: is not a regular file"),
    "unknown --series (DICOM)": (unknown_series_uid, "no series 1.2.3.999; available: "),
    "unknown --series (NIfTI)": (unknown_series_for_nifti, "series 'other.nii.gz' not found"),
}


def _run_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    code = engine.cli.main(["info", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, tmp_path, capsys):
    build, fragment = CASES[name]
    code, out, err = _run_in_process(build(tmp_path), capsys)
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("speechct: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    for part in (fragment,) if isinstance(fragment, str) else fragment:
        assert part in err, err
    assert "Traceback" not in err


def test_corpus_is_big_enough():
    assert len(CASES) >= 15


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(tmp_path, capsys):
    folder = tmp_path / "locked"
    _dicom_folder(folder)
    folder.chmod(0)
    try:
        code, _, err = _run_in_process([str(folder)], capsys)
    finally:
        folder.chmod(0o755)
    assert code == 2
    assert "permission denied" in err.lower(), err


def test_rows_columns_differing_inside_one_series_are_split_not_mixed(tmp_path, capsys):
    # Not an error: the reader splits one SeriesInstanceUID by matrix size (3D Slicer's habit),
    # loads the bigger stack and says so. Mixing 8×8 and 10×8 slices into one array would be the bug.
    files = _dicom_folder(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.Rows = 10
    ds.PixelData = np.zeros((10, 8), np.uint16).tobytes()
    ds.save_as(files[2])
    code, out, err = _run_in_process([str(tmp_path / "series"), "--json"], capsys)
    assert code == 0, err
    import json

    report = json.loads(out)
    shapes = sorted(tuple(s["shape"]) for s in report["series"])
    assert shapes == [(1, 10, 8), (2, 8, 8)]
    assert report["chosen"]["shape"] == [2, 8, 8]
    assert any("2 series found" in w for w in report["warnings"])


def _speechct_command() -> list[str]:
    exe = Path(sys.executable).with_name("speechct")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "engine.cli"]


def test_real_subprocess_bad_input_has_no_traceback(tmp_path):
    args = png_renamed_dcm(tmp_path)
    proc = subprocess.run([*_speechct_command(), "info", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("not a DICOM or NIfTI file (looks like a PNG image)")
    assert proc.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_input_through_a_real_subprocess(name, tmp_path):
    build, fragment = CASES[name]
    args = build(tmp_path)
    proc = subprocess.run([*_speechct_command(), "info", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for part in (fragment,) if isinstance(fragment, str) else fragment:
        assert part in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_unexpected_errors_become_one_line(tmp_path, capsys, monkeypatch):
    import engine.commands.info as info

    def boom(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(info, "open_study", boom)
    code, out, err = _run_in_process([str(tmp_path)], capsys)
    assert code == 2
    assert err == f"speechct: error: {tmp_path}: cannot be read (RuntimeError: something broke)\n"


def test_os_errors_from_a_reader_name_the_file(tmp_path, capsys, monkeypatch):
    import engine.io.dicom as dicom

    _dicom_folder(tmp_path)
    bad = str(tmp_path / "series" / "0001-00002.dcm")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", bad)

    monkeypatch.setattr(dicom, "read_dicom_series", denied)
    code, _, err = _run_in_process([str(tmp_path / "series")], capsys)
    assert code == 2
    assert err == f"speechct: error: {bad}: cannot be read (Permission denied)\n"


def test_fifo_inside_a_nifti_folder_is_skipped(tmp_path, capsys):
    write_nifti(_volume(), tmp_path / "a.nii.gz")
    os.mkfifo(tmp_path / "pipe")
    code, out, err = _run_in_process([str(tmp_path)], capsys)
    assert code == 0, err
    assert "a.nii.gz" in out


def test_nothing_written_by_failed_reads(tmp_path, capsys):
    # Reading never writes: the corpus folder is unchanged after every failing case.
    build, _ = CASES["truncated .nii.gz"]
    args = build(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _run_in_process(args, capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
