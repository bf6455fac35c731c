"""Issue 21's findings, one test each (each failed before its fix): the warnings loop, the tracebacks
(PixelSpacing 0\\0, a bad study in a tree, file names that are not UTF-8), control characters on the
terminal, nibabel's pixdim message, error lines that name the file, the 1 x 1 x 1 NIfTI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine.cli import main
from engine.errors import SpeechCTError, one_line, printable
from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume

from .tiny_bundle import tiny_bundle_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))


def _volume(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 400, (16, 32, 32)).astype(np.int16)
    return Volume(arr, (2.5, 1.4, 1.4))


def _series(folder: Path, seed: int = 0, **fields) -> Path:
    files = write_dicom_series(_volume(seed), folder, seed=seed)
    if fields:
        for f in files:
            ds = pydicom.dcmread(f)
            for key, value in fields.items():
                setattr(ds, key, value)
            ds.save_as(f)
    return folder


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, *fragments: str) -> None:
    assert err.startswith("speechct: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ----------------------------------------------------------------------------- warnings


def test_a_third_party_warning_is_one_line_once_and_never_loops(tmp_path):
    """The old wrapper re-emitted each non-SpeechCT warning while still recording: it recorded it again,
    forever (8.5 GB after 180 s). Run in a subprocess so that a loop is a timeout, not a hung suite."""
    script = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        from engine.commands.engine_options import one_line_warnings

        @one_line_warnings
        def run(args):
            np.array([0.0]) / np.array([0.0])
            for _ in range(3):
                warnings.warn("third party\\nsays so", UserWarning)
            return 0

        sys.exit(run(None))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("speechct: warning: RuntimeWarning from <string>:")
    assert lines[0].endswith("invalid value encountered in divide")
    assert lines[1].startswith("speechct: warning: UserWarning from <string>:") and lines[1].endswith("third party says so")


def test_zero_orientation_ends_at_once_with_the_field_named(tmp_path, capsys):
    study = _series(tmp_path / "iop0", ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    for argv in (["info", study], ["rank", "--ct", study], ["search", "--ct", study, "--library", tmp_path / "lib"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and out == ""
        _one_error_line(err, "0001-00001.dcm: ImageOrientationPatient 0\\0\\0\\0\\0\\0 holds a zero direction")


# ----------------------------------------------------------------------------- tracebacks


def test_zero_pixel_spacing_is_one_line_and_info_agrees_with_rank(tmp_path, capsys):
    study = _series(tmp_path / "ps0", PixelSpacing=[0, 0])
    expected = "PixelSpacing 0\\0 is not a voxel size in mm"
    for argv in (["info", study], ["rank", "--ct", study], ["index", "add", study, "--library", tmp_path / "lib"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.splitlines()[-1].startswith("speechct: error: ") and expected in err, err
        assert "Traceback" not in err


def test_index_add_of_a_tree_reports_the_bad_study_and_adds_the_rest(tmp_path, capsys):
    tree = tmp_path / "tree"
    for i in range(3):
        _series(tree / f"a{i}", seed=10 + i)
    _series(tree / "a1-bad", seed=20, PixelSpacing=[0, 0])
    code, out, err = _cli(capsys, "index", "add", tree, "--library", tmp_path / "lib")
    assert code == 2, (out, err)  # something failed: exit 2, after adding the rest
    assert out.count("added        ") == 3
    [bad] = [line for line in out.splitlines() if line.startswith("unreadable")]
    assert "a1-bad" in bad and "PixelSpacing 0\\0" in bad
    assert "3 added, 0 already in the library, 0 skipped, 1 unreadable" in out
    _one_error_line(err, "1 of 4 studies could not be added")
    code, out, _ = _cli(capsys, "index", "list", "--library", tmp_path / "lib", "--json")
    assert code == 0 and len(json.loads(out)["studies"]) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes")
def test_a_folder_name_that_is_not_utf8(tmp_path, capsys):
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")  # Latin-1 'café'
    _series(Path(folder), seed=3)
    lib = tmp_path / "lib"
    code, out, err = _cli(capsys, "index", "add", folder, "--library", lib)
    assert code == 0, err
    assert "1 added" in out
    code, out, err = _cli(capsys, "index", "list", "--library", lib)
    assert code == 0 and "caf\\xe9" in out  # escaped on the terminal, never a UnicodeEncodeError
    code, out, _ = _cli(capsys, "index", "add", folder, "--library", lib)  # found again by its path
    assert code == 0 and "0 added, 1 already in the library" in out
    code, out, _ = _cli(capsys, "index", "list", "--library", lib, "--json")
    [study] = json.loads(out)["studies"]
    assert study["path"] == str(Path(folder).resolve())  # the exact name round-trips through SQLite
    code, out, _ = _cli(capsys, "index", "remove", folder, "--library", lib)
    assert code == 0, out


# ----------------------------------------------------------------------------- smaller points


def test_printable_escapes_what_could_drive_a_terminal():
    assert printable("plain é ü 中") == "plain é ü 中"
    assert printable("a\x1b[31mb\rc\u202ed") == "a\\x1b[31mb\\x0dc\\u202ed"
    assert printable("caf\udce9") == "caf\\xe9"
    assert printable("x\ny\tz") == "x\ny\tz" and printable("x\ny", newlines=False) == "x\\x0ay"
    assert one_line("a\n b \x07") == "a b \\x07"


def test_bundle_info_escapes_a_hostile_bundle_name(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_path(), bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["name"] = "evil\n\x1b[2J\x1b[31mname"
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    code, out, err = _cli(capsys, "bundle-info", bundle, "--no-backbone")
    assert code == 0, err
    assert "\x1b" not in out
    [name] = [line for line in out.splitlines() if line.startswith("name")]
    assert name == "name        evil\\x0a\\x1b[2J\\x1b[31mname"


def test_nifti_zero_pixdim_is_refused_by_name_without_nibabels_line(tmp_path, capsys):
    path = write_nifti(_volume(), tmp_path / "zero-pixdim.nii")
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1..3]
    raw[254:256] = np.zeros(1, "<i2").tobytes()  # sform_code 0: the qform (with pixdim) is used
    path.write_bytes(bytes(raw))
    with open(path, "rb") as fh:
        header = nib.Nifti1Header.from_fileobj(fh, check=False)
    assert header["pixdim"][1] == 0 and header["qform_code"] == 1 and header["sform_code"] == 0
    code, out, err = _cli(capsys, "rank", "--ct", path)
    assert code == 2
    _one_error_line(err, "zero-pixdim.nii: pixdim[1,2,3] 0\\0\\0 is not a voxel size in mm")
    assert "setting 0 dims to 1" not in err


def test_a_1x1x1_nifti_is_refused(tmp_path, capsys):
    path = write_nifti(Volume(np.zeros((1, 1, 1), np.int16), (1.0, 1.0, 1.0)), tmp_path / "dot.nii.gz")
    for argv in (["info", path], ["rank", "--ct", path]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and out == ""
        _one_error_line(err, "dot.nii.gz: is 1x1x1 voxels: too small for a CT image")


def test_a_library_url_with_a_password_is_refused_without_showing_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["index", "list", "--library", "postgresql://user:s3cret@db/speechct"],
                 ["search", "--text", "x", "--library", "postgresql://user:s3cret@db/speechct"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and "s3cret" not in out + err
        _one_error_line(err, "postgresql://user@db/speechct: the library URL holds a password")
    assert list(tmp_path.iterdir()) == []  # no local folder named 'postgresql:'


def test_a_library_url_of_another_scheme_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "index", "list", "--library", "mysql://user@db/speechct")
    assert code == 2
    _one_error_line(err, "mysql://user@db/speechct: a library must be a local folder or a postgresql:// URL")
    assert list(tmp_path.iterdir()) == []


def test_speech_errors_name_the_file(tmp_path):
    from engine.runtime import Engine

    engine = Engine(tiny_bundle_path(), cache_dir=False, device="cpu")
    with pytest.raises(SpeechCTError, match=r"^q\.wav: dictation too short: 6 ms"):
        engine.encode_speech_frames(np.ones(100, np.float32), 16000, source="q.wav")
    with pytest.raises(SpeechCTError, match=r"^vol\.nii: the encoder produced a zero or non-finite embedding"):
        from engine.runtime import _unit

        _unit(np.zeros(4), "vol.nii")
