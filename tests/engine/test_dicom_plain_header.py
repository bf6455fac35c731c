"""engine.io.dicom_plain_header: plain files read without pydicom give exactly what pydicom's path gives."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

import engine.io.dicom_scan as dicom_scan
from engine.io.dicom_write import write_dicom_series
from engine.volume import Volume

from .bad_corpus import CASES

REPO = Path(__file__).resolve().parents[2]


def _both_ways(monkeypatch, path: str) -> tuple[object, object, bool]:
    """(read_header with the plain reader, read_header with pydicom only, whether the plain reader took it)."""
    taken = []
    real = dicom_scan.read_plain_header

    def spying(fp, head):
        got = real(fp, head)
        taken.append(got is not None)
        return got

    with monkeypatch.context() as m:
        m.setattr(dicom_scan, "read_plain_header", spying)
        plain = dicom_scan.read_header(path)
    with monkeypatch.context() as m:
        m.setattr(dicom_scan, "read_plain_header", lambda fp, head: None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = dicom_scan.read_header(path)
    return plain, other, any(taken)


def _same(a, b) -> bool:
    """Equal outcomes, NaN fields included (a NaN is never == itself, its repr is)."""
    return repr(a) == repr(b)


def _regular_files(folder: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
    return sorted(out)


def _volume(shape=(3, 16, 16)) -> Volume:
    rng = np.random.default_rng(3)
    return Volume(rng.integers(-1000, 1500, shape).astype(np.int16), (2.0, 0.7, 0.7), origin=(-5.0, 3.0, 10.0))


def test_written_syntaxes_and_character_sets_agree(tmp_path, monkeypatch):
    cases = {}
    for syntax in (None, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGLSLossless):
        folder = tmp_path / f"syntax-{syntax or 'default'}"
        write_dicom_series(_volume(), folder, transfer_syntax=syntax, series_description="Thorax ü \\ 2")
        cases[str(syntax)] = (folder, syntax in (None, ImplicitVRLittleEndian))
    # other character sets: Latin-1 read here, a Japanese one left to pydicom; a modality LUT left to pydicom
    for name, charset, description, plain in [
        ("latin1", "ISO_IR 100", "Thorax \u00e9l\u00e8ve", True),
        ("none", None, "Thorax", True),
        ("japanese", "ISO 2022 IR 87", "Thorax", False),
        ("sv", "ISO_IR 192", "64-bit values", True),  # an SV element: a 4-byte length in explicit VR
    ]:
        folder = tmp_path / name
        for path in write_dicom_series(_volume(), folder):
            ds = pydicom.dcmread(path)
            if charset is None:
                del ds.SpecificCharacterSet
            else:
                ds.SpecificCharacterSet = charset
            ds.SeriesDescription = description
            if name == "sv":
                ds.SelectorSVValue = [-(2**40), 7]
            ds.save_as(path)
        cases[name] = (folder, plain)
    for name, (folder, plain_expected) in cases.items():
        for path in _regular_files(folder):
            plain, other, taken = _both_ways(monkeypatch, path)
            assert _same(plain, other), (name, path)
            assert taken == plain_expected, (name, path)
            assert plain[0] == "image"
    latin = dicom_scan.read_header(_regular_files(tmp_path / "latin1")[0])[1][0]
    assert latin.meta["series_description"] == "Thorax \u00e9l\u00e8ve"


def test_value_representations_match_pydicoms():
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

    from engine.io.dicom_plain_header import _SHORT_VRS, LONG_VRS

    assert {v.decode() for v in LONG_VRS} == {str(v) for v in EXPLICIT_VR_LENGTH_32}
    assert {v.decode() for v in _SHORT_VRS} == {str(v) for v in EXPLICIT_VR_LENGTH_16}


def test_pydicoms_test_files_agree(monkeypatch):
    folder = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    n_plain = 0
    for path in sorted(str(p) for p in folder.glob("*.dcm")):
        plain, other, taken = _both_ways(monkeypatch, path)
        assert _same(plain, other), path
        n_plain += taken
    assert n_plain >= 5  # the comparison is not empty: the plain reader took some of them


def test_bad_corpus_dicom_cases_agree(tmp_path, monkeypatch):
    """Every file of the bad-input corpus' DICOM cases: the same slices, or the same one-line problem."""
    n_files = n_plain = 0
    for i, case in enumerate(c for c in CASES if c.category == "dicom"):
        where = tmp_path / f"case{i}"
        where.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.build(where)
        for path in _regular_files(where):
            plain, other, taken = _both_ways(monkeypatch, path)
            assert _same(plain, other), (case.name, path)
            n_files += 1
            n_plain += taken
    assert n_files > 100 and n_plain > 0.5 * n_files


def test_a_plain_series_loads_without_importing_pydicom_or_nibabel(tmp_path):
    folder = tmp_path / "series"
    want = _volume((4, 16, 16))
    write_dicom_series(want, folder, instance_order="shuffled")
    code = (
        "import sys, json\n"
        "from engine.io import open_study\n"
        "source = open_study(sys.argv[1])\n"
        "volume = source.load(source.series[0].uid)\n"
        "print(json.dumps({'loaded': sorted(m for m in ('pydicom', 'nibabel') if m in sys.modules),"
        " 'values': volume.array.ravel().tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["values"] == want.array.ravel().tolist()


@pytest.mark.parametrize("cut", [140, 400])
def test_a_file_cut_inside_its_header_goes_to_pydicom(tmp_path, monkeypatch, cut):
    path = write_dicom_series(_volume((1, 8, 8)), tmp_path / "s")[0]
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    plain, other, taken = _both_ways(monkeypatch, str(path))
    assert not taken and _same(plain, other) and plain[0] == "unreadable"


def test_deeply_nested_sequences_go_to_pydicom(tmp_path):
    """Undefined-length sequences nested beyond any real header: no RecursionError, pydicom's to judge."""
    from engine.io.dicom_plain_header import read_plain_header

    path = write_dicom_series(_volume((1, 8, 8)), tmp_path / "s")[0]
    data = path.read_bytes()
    pixel = data.index(b"\xe0\x7f\x10\x00")
    opening = b"\x09\x00\x10\x00" + b"SQ\x00\x00" + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    deep = 5000
    path.write_bytes(data[:pixel] + opening * deep + closing * deep + data[pixel:])
    with open(path, "rb") as fp:
        assert read_plain_header(fp, fp.read(16384)) is None
    shallow = tmp_path / "shallow.dcm"
    shallow.write_bytes(data[:pixel] + opening * 3 + closing * 3 + data[pixel:])
    with open(shallow, "rb") as fp:
        header = read_plain_header(fp, fp.read(16384))
    assert header is not None and 0x00090010 in header
