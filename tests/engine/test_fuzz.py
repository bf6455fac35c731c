"""Property-based fuzzing (hypothesis) of what SpeechCT reads: DICOM headers (every geometry, rescale and
pixel-description field: NaN, zero, negative, huge, wrong VR, garbage), NIfTI headers and WAV headers.

Each mutated input is read in a forked child (``os.fork`` + ``os.wait4``: its own time limit, its peak
RSS from ``ru_maxrss``). The rule: within 30 s and 2 GB, the reader returns a volume that passes the
validation gate (or a waveform), or raises the engine's one-line error naming the file; anything else
(another exception, a hang, a crash) fails. A second harness sends mutated studies through
``speechct rank`` with the tests' tiny bundle (the corpus's fork server), with the corpus's rule.

Slow (``make test-all``). Counts: ``FUZZ_LOAD_EXAMPLES`` per format (default 4000 DICOM + 4000 NIfTI +
2000 WAV = 10,000 loads) and ``FUZZ_RANK_EXAMPLES`` (default 500 rank runs). Examples are drawn
deterministically (``derandomize=True``), no example database is kept.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]

LIMIT_S = 30.0
LIMIT_RSS_MB = 2048.0
N_LOAD = int(os.environ.get("FUZZ_LOAD_EXAMPLES", "4000"))
N_WAV = int(os.environ.get("FUZZ_WAV_EXAMPLES", str(max(1, N_LOAD // 2))))
N_RANK = int(os.environ.get("FUZZ_RANK_EXAMPLES", "500"))
REPO = Path(__file__).resolve().parents[2]
STATS: dict[str, dict] = {}


def _settings(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# ----------------------------------------------------------------------------- the forked reader


def _read_in_child(kind: str, path: str) -> dict:
    """In the child: read ``path`` and report what happened (never raises)."""
    from engine.errors import SpeechCTError

    try:
        if kind == "wav":
            from engine.audio import load_audio
            from engine.speech_presence import check_speech

            wave = load_audio(path)
            assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
            check_speech(wave, 16000)
            return {"outcome": "ok"}
        import warnings

        from engine.io import load_volume
        from engine.io.validate import MAX_SPACING_MM, MIN_SPACING_MM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = load_volume(path)
        # what the gate promises about every volume it lets through
        assert all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in volume.spacing), volume.spacing
        assert np.all(np.isfinite(volume.direction)) and np.all(np.isfinite(volume.origin))
        assert volume.array.ndim == 3 and min(volume.shape[1:]) >= 2
        if volume.array.dtype.kind == "f":
            assert np.isfinite(volume.array).all()
        return {"outcome": "ok"}
    except SpeechCTError as exc:
        line = str(exc)
        ok = len(line) < 2000 and (exc.path is not None or path in line)  # the CLI prints it on one line
        return {"outcome": "error" if ok else "bad", "message": line[:500]}
    except BaseException as exc:  # noqa: BLE001 - exactly what the fuzzer is looking for
        import traceback

        return {"outcome": "bad", "message": "".join(traceback.format_exception(exc))[-3000:]}


def _preload() -> None:
    """Import every reader in this (the parent) process once, so that each fork starts ready."""
    import engine.audio  # noqa: F401
    import engine.io.dicom  # noqa: F401
    import engine.io.nifti  # noqa: F401
    import engine.io.validate  # noqa: F401
    import engine.speech_presence  # noqa: F401
    from engine.audio import _feature_extractor  # noqa: F401


def forked_read(kind: str, path: Path) -> dict:
    _preload()
    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no torch work, just the reader
        os.close(read_fd)
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            result = _read_in_child(kind, str(path))
            os.write(write_fd, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    deadline = started + LIMIT_S
    timed_out = False
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            data += chunk
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    result = pickle.loads(data) if data else {"outcome": "bad", "message": f"child died (status {status})"}
    result.update(seconds=time.perf_counter() - started, rss_mb=usage.ru_maxrss / 1024.0, timed_out=timed_out)
    return result


def _stats(kind: str) -> dict:
    return STATS.setdefault(kind, {"n": 0, "ok": 0, "error": 0, "seconds": 0.0, "max_rss_mb": 0.0,
                                   "failures": {}})


def _check(kind: str, path: Path, result: dict, what: str) -> None:
    """Count the outcome; a broken rule is kept (one example per kind of failure) rather than raised, so
    that one run lists every kind of failure (hypothesis would stop at the first and shrink it)."""
    stats = _stats(kind)
    stats["n"] += 1
    stats["seconds"] += result["seconds"]
    stats["max_rss_mb"] = max(stats["max_rss_mb"], result["rss_mb"])
    problem = None
    if result["timed_out"]:
        problem = f"still reading after {LIMIT_S:.0f} s"
    elif result["rss_mb"] >= LIMIT_RSS_MB:
        problem = f"peak RSS {result['rss_mb']:.0f} MB"
    elif result["outcome"] not in ("ok", "error"):
        message = result.get("message") or ""
        problem = message.strip().splitlines()[-1] if message.strip() else "no result"
    if problem is None:
        stats[result["outcome"]] += 1
    else:
        stats["failures"].setdefault(problem[:200], f"{what}\n{result.get('message')}")


def _assert_no_failures(kind: str) -> None:
    failures = _stats(kind)["failures"]
    assert not failures, f"{len(failures)} kinds of failure:\n\n" + "\n\n".join(
        f"{key}\n  e.g. {example}" for key, example in list(failures.items())[:10])


# ----------------------------------------------------------------------------- values

NASTY_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-30, 1e30, -1e30, 1e308, 5e-324,
                2.0**31, -(2.0**31), 0.5, 1.0, 3.0]
NASTY_INTS = [0, 1, -1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4095, 32767, 32768, 65535, 65536,
              2**31 - 1, 2**31, 2**32 - 1, -32768]


def nasty_float():
    return st.one_of(st.sampled_from(NASTY_FLOATS), st.floats(allow_nan=True, allow_infinity=True, width=32))


def nasty_int():
    return st.one_of(st.sampled_from(NASTY_INTS), st.integers(-(2**31), 2**32))


# ----------------------------------------------------------------------------- DICOM

#: (keyword, tag, VR, multiplicity) of every geometry, rescale and pixel-description field.
DICOM_FIELDS = [
    ("PixelSpacing", 0x00280030, "DS", 2), ("ImageOrientationPatient", 0x00200037, "DS", 6),
    ("ImagePositionPatient", 0x00200032, "DS", 3), ("SliceThickness", 0x00180050, "DS", 1),
    ("SpacingBetweenSlices", 0x00180088, "DS", 1), ("RescaleSlope", 0x00281053, "DS", 1),
    ("RescaleIntercept", 0x00281052, "DS", 1), ("Rows", 0x00280010, "US", 1), ("Columns", 0x00280011, "US", 1),
    ("BitsAllocated", 0x00280100, "US", 1), ("BitsStored", 0x00280101, "US", 1), ("HighBit", 0x00280102, "US", 1),
    ("PixelRepresentation", 0x00280103, "US", 1), ("SamplesPerPixel", 0x00280002, "US", 1),
    ("PhotometricInterpretation", 0x00280004, "CS", 1), ("NumberOfFrames", 0x00280008, "IS", 1),
    ("InstanceNumber", 0x00200013, "IS", 1), ("Modality", 0x00080060, "CS", 1),
    ("SeriesInstanceUID", 0x0020000E, "UI", 1), ("ImageType", 0x00080008, "CS", 3),
    ("AcquisitionNumber", 0x00200012, "IS", 1), ("PixelPaddingValue", 0x00280120, "US", 1),
]
WRONG_VRS = ["US", "SS", "FL", "FD", "OB", "UN", "LO", "SQ", "AT"]


@st.composite
def dicom_value(draw, vr: str, vm: int):
    """Raw bytes for an element: numbers of its own VR (NaN, zero, negative, huge), the wrong
    multiplicity, garbage, empty."""
    how = draw(st.sampled_from(["numbers", "numbers", "wrong count", "garbage", "empty", "text"]))
    count = vm if how != "wrong count" else draw(st.sampled_from([0, 1, max(0, vm - 1), vm + 1, 50]))
    if how in ("numbers", "wrong count"):
        if vr in ("US", "SS", "IS"):
            values = [draw(nasty_int()) for _ in range(count)]
            if vr == "US":
                return b"".join(struct.pack("<H", v & 0xFFFF) for v in values)
            if vr == "SS":
                return b"".join(struct.pack("<h", ((v + 32768) & 0xFFFF) - 32768) for v in values)
            text = "\\".join(str(v) for v in values)
        else:
            text = "\\".join(repr(draw(nasty_float())) for _ in range(count))
        raw = text.encode("ascii", "replace")
        return raw + b" " * (len(raw) % 2)
    if how == "empty":
        return b""
    if how == "text":
        raw = draw(st.text(min_size=1, max_size=24)).encode("utf-8", "replace")
        return raw + b" " * (len(raw) % 2)
    raw = draw(st.binary(min_size=1, max_size=32))
    return raw + b"\0" * (len(raw) % 2)


@st.composite
def dicom_mutations(draw):
    n = draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        keyword, tag, vr, vm = draw(st.sampled_from(DICOM_FIELDS))
        use_vr = draw(st.sampled_from([vr] * 4 + WRONG_VRS))
        value = draw(dicom_value(vr, vm))
        which = draw(st.sampled_from(["all", "all", "first", "last", "delete"]))
        out.append((keyword, tag, use_vr, value, which))
    return out


def _base_dicom(folder: Path, shape=(3, 8, 8), spacing=(2.0, 0.7, 0.7)) -> list[bytes]:
    rng = np.random.default_rng(0)
    vol = Volume(rng.integers(-1000, 300, shape).astype(np.int16), spacing)
    files = write_dicom_series(vol, folder)
    return [f.read_bytes() for f in files]


def _write_mutated(folder: Path, base: list[bytes], mutations) -> Path:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in base]
    for _, tag, vr, value, which in mutations:
        chosen = {"all": datasets, "first": datasets[:1], "last": datasets[-1:], "delete": datasets}[which]
        for ds in chosen:
            t = Tag(tag)
            if which == "delete":
                ds._dict.pop(t, None)
            else:
                ds._dict[t] = RawDataElement(t, vr, len(value), value, 0, False, True)
    for i, ds in enumerate(datasets):
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - pydicom cannot write this mutation: write its raw values by hand
            buf = io.BytesIO()
            ds.save_as(buf)
        (folder / f"{i:04d}.dcm").write_bytes(buf.getvalue())
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_fuzz_dicom_headers_through_load_and_the_gate(work):
    base = _base_dicom(work / "base-dicom")

    @_settings(N_LOAD)
    @given(dicom_mutations())
    def one(mutations):
        folder = _write_mutated(work / "dicom", base, mutations)
        _check("dicom", folder, forked_read("volume", folder), f"DICOM {mutations}")

    one()
    _assert_no_failures("dicom")


# ----------------------------------------------------------------------------- NIfTI

#: (name, offset, struct format) of the NIfTI-1 header fields.
NIFTI_FIELDS = [
    ("sizeof_hdr", 0, "<i"), ("dim[0]", 40, "<h"), ("dim[1]", 42, "<h"), ("dim[2]", 44, "<h"), ("dim[3]", 46, "<h"),
    ("dim[4]", 48, "<h"), ("datatype", 70, "<h"), ("bitpix", 72, "<h"), ("pixdim[0]", 76, "<f"),
    ("pixdim[1]", 80, "<f"), ("pixdim[2]", 84, "<f"), ("pixdim[3]", 88, "<f"), ("vox_offset", 108, "<f"),
    ("scl_slope", 112, "<f"), ("scl_inter", 116, "<f"), ("qform_code", 252, "<h"), ("sform_code", 254, "<h"),
    ("quatern_b", 256, "<f"), ("quatern_c", 260, "<f"), ("quatern_d", 264, "<f"), ("qoffset_x", 268, "<f"),
    ("qoffset_y", 272, "<f"), ("qoffset_z", 276, "<f"),
    *[(f"srow_{axis}[{i}]", 280 + 16 * a + 4 * i, "<f") for a, axis in enumerate("xyz") for i in range(4)],
    ("magic", 344, "4s"), ("extension", 348, "4s"),
]


@st.composite
def nifti_mutations(draw):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        name, offset, fmt = draw(st.sampled_from(NIFTI_FIELDS))
        if fmt == "<f":
            with np.errstate(over="ignore"):
                value = np.asarray(draw(nasty_float()), "<f4").tobytes()  # beyond float32: inf
        elif fmt == "<h":
            value = struct.pack(fmt, ((draw(nasty_int()) + 32768) & 0xFFFF) - 32768)
        elif fmt == "<i":
            value = struct.pack(fmt, ((draw(nasty_int()) + 2**31) & 0xFFFFFFFF) - 2**31)
        else:
            value = draw(st.binary(min_size=4, max_size=4))
        out.append((name, offset, value))
    gz = draw(st.booleans())
    cut = draw(st.sampled_from([None, None, None, 352, 200, -1, -100]))
    return out, gz, cut


def test_fuzz_nifti_headers_through_load_and_the_gate(work):
    rng = np.random.default_rng(1)
    base = write_nifti(Volume(rng.integers(-1000, 300, (4, 6, 5)).astype(np.int16), (2.0, 0.7, 0.8)),
                       work / "base.nii").read_bytes()

    @_settings(N_LOAD)
    @given(nifti_mutations())
    def one(mutation):
        fields, gz, cut = mutation
        raw = bytearray(base)
        for _, offset, value in fields:
            raw[offset:offset + len(value)] = value
        data = bytes(raw if cut is None else raw[:cut])
        path = work / ("fuzz.nii.gz" if gz else "fuzz.nii")
        for old in (work / "fuzz.nii", work / "fuzz.nii.gz"):
            old.unlink(missing_ok=True)
        import gzip

        path.write_bytes(gzip.compress(data, 1) if gz else data)
        _check("nifti", path, forked_read("volume", path), f"NIfTI {fields} gz={gz} cut={cut}")

    one()
    _assert_no_failures("nifti")


# ----------------------------------------------------------------------------- WAV

#: (name, offset, struct format) of a canonical 44-byte WAV header.
WAV_FIELDS = [("RIFF", 0, "4s"), ("riff size", 4, "<I"), ("WAVE", 8, "4s"), ("fmt ", 12, "4s"),
              ("fmt size", 16, "<I"), ("format", 20, "<H"), ("channels", 22, "<H"), ("rate", 24, "<I"),
              ("byte rate", 28, "<I"), ("block align", 32, "<H"), ("bits", 34, "<H"), ("data", 36, "4s"),
              ("data size", 40, "<I")]


@st.composite
def wav_mutations(draw):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        name, offset, fmt = draw(st.sampled_from(WAV_FIELDS))
        if fmt == "4s":
            value = draw(st.binary(min_size=4, max_size=4))
        elif fmt == "<H":
            value = struct.pack(fmt, draw(nasty_int()) & 0xFFFF)
        else:
            value = struct.pack(fmt, draw(nasty_int()) & 0xFFFFFFFF)
        out.append((name, offset, value))
    return out, draw(st.sampled_from([None, None, 44, 30, 1000]))


def test_fuzz_wav_headers_through_load_and_the_speech_check(work):
    import soundfile

    rng = np.random.default_rng(2)
    soundfile.write(str(work / "base.wav"), (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000,
                    subtype="PCM_16")
    base = (work / "base.wav").read_bytes()

    @_settings(N_WAV)
    @given(wav_mutations())
    def one(mutation):
        fields, cut = mutation
        raw = bytearray(base)
        for _, offset, value in fields:
            raw[offset:offset + len(value)] = value
        path = work / "fuzz.wav"
        path.write_bytes(bytes(raw if cut is None else raw[:cut]))
        _check("wav", path, forked_read("wav", path), f"WAV {fields} cut={cut}")

    one()
    _assert_no_failures("wav")


# ----------------------------------------------------------------------------- rank


def test_fuzz_studies_through_rank(work, tmp_path):
    from . import forked
    from .bad_corpus import chest
    from .test_bad_input_corpus import _check_run
    from .tiny_bundle import tiny_bundle_path

    env = {"SPEECHCT_BUNDLE": str(tiny_bundle_path()), "SPEECHCT_EMBEDDING_CACHE": str(tmp_path / "emb"),
           "HOME": str(tmp_path)}
    folder = work / "rank-base"
    base = [f.read_bytes() for f in write_dicom_series(chest(shape=(12, 24, 24), spacing=(2.5, 1.9, 1.9)), folder)]
    nifti_base = write_nifti(chest(shape=(12, 24, 24), spacing=(2.5, 1.9, 1.9)), work / "rank-base.nii").read_bytes()

    class Case:
        name = "fuzzed study"

    @_settings(N_RANK)
    @given(st.one_of(dicom_mutations().map(lambda m: ("dicom", m)), nifti_mutations().map(lambda m: ("nifti", m))))
    def one(drawn):
        kind, mutation = drawn
        if kind == "dicom":
            target = _write_mutated(work / "rank-dicom", base, mutation)
        else:
            fields, _, _ = mutation
            raw = bytearray(nifti_base)
            for _, offset, value in fields:
                raw[offset:offset + len(value)] = value
            target = work / "rank.nii"
            target.write_bytes(bytes(raw))
        outcome = forked.run_cli(["rank", "--ct", target, "--json"], env=env, limit_s=LIMIT_S)
        stats = _stats("rank")
        stats["n"] += 1
        stats["seconds"] += outcome.seconds
        stats["max_rss_mb"] = max(stats["max_rss_mb"], outcome.max_rss_mb)
        try:
            _check_run(Case, ["rank", "--ct", target], outcome, target)
            if outcome.code == 0:
                result = json.loads(outcome.out)
                assert len(result["findings"]) == 18
                assert all(0.0 <= f["probability"] <= 1.0 for f in result["findings"])
        except AssertionError as exc:
            stats["failures"].setdefault(str(exc).splitlines()[0][:200], f"{kind} {mutation}\n{exc}")
            return
        stats["ok" if outcome.code == 0 else "error"] += 1

    one()
    _assert_no_failures("rank")


def test_zz_report():
    """The counts and times the README quotes (run with -s)."""
    for kind, s in STATS.items():
        print(f"\nfuzz {kind}: {s['n']} inputs ({s['ok']} read, {s['error']} refused in one line, "
              f"{len(s['failures'])} kinds of failure), {s['seconds']:.0f} s in forked readers, "
              f"peak RSS {s['max_rss_mb']:.0f} MB")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
