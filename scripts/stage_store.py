"""Finished bundle stages kept in the repository, so a pipeline longer than one working session can go on
in the next one from a fresh checkout (``scripts/make_bundle.py``).

The synthetic data is remade from its seed in every checkout (tens of GB, not kept), but a finished
stage's weights are small: a teacher is ~35 MB. ``store`` copies a finished stage's output with a
fingerprint of the data and the config it was trained on; ``restore`` copies it back into a run folder
only when the data remade here has the same fingerprint (the synthesis is deterministic for a seed, and
the fingerprint checks it: the reports, labels and metadata files of every root and the bytes of the
first training volumes) and the config is the same. A mismatch means the stage runs again, and says why.

    python scripts/make_bundle.py --data D --store-stage teacher     # after the teacher finished
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "assets" / "training-stages"

_MODEL = ("model.safetensors", "model.json", "metrics.jsonl")
_HEAD = ("head.safetensors", "head.json")
#: what of each storable stage's run folders is kept (the rest — checkpoints, caches — is not needed
#: later); the first two files of each folder must exist
KEPT: dict[str, dict[str, tuple[str, ...]]] = {
    "teacher": {"teacher": _MODEL},
    "text-reader": {"text_reader": _HEAD},
    "student": {"student": _MODEL, "dictation": _HEAD},
    "student-naive": {"student-naive": _MODEL, "dictation-naive": _HEAD},
    "evaluate": {"evaluation": ("evaluation.json", "evaluation.md", "asr_transcripts.json")},
    "evaluate-test": {"evaluation-test": ("evaluation.json", "evaluation.md", "asr_transcripts.json")},
}

#: first training volumes and dictations whose bytes enter the fingerprint (the CSVs cover the rest)
VOLUMES_HASHED = 4


def data_fingerprint(data: Path) -> str:
    """sha256 over every root's CSV files (reports, labels, metadata, mentions, audio manifests) and the
    bytes of the first few training volumes and dictations: equal for data remade from the same seed by
    the same generator and voices."""
    roots = ("ct-rate", "ct-rate-test", "speech-rate", "speech-rate-test")
    files = sorted(p for root in roots for p in (data / root).rglob("*.csv"))
    volumes = sorted((data / "ct-rate").rglob("*.nii.gz"), key=lambda p: p.name)[:VOLUMES_HASHED]
    volumes += sorted((data / "speech-rate").rglob("*.wav"), key=lambda p: p.name)[:VOLUMES_HASHED]
    if not files or not volumes:
        raise FileNotFoundError(f"{data}: no synthesised data to fingerprint")
    memo = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (*files, *volumes))
    if memo not in _FINGERPRINTS:
        _FINGERPRINTS[memo] = _hash_files(data, [*files, *volumes])
    return _FINGERPRINTS[memo]


_FINGERPRINTS: dict[tuple, str] = {}


def _hash_files(data: Path, paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        raw = path.read_bytes()
        digest.update(str(path.relative_to(data)).encode())
        # a volume's content, not its gzip header (which carries a time stamp)
        digest.update(hashlib.sha256(gzip.decompress(raw) if path.suffix == ".gz" else raw).digest())
    return digest.hexdigest()


#: config sections that do not change a stage's result (a new student setting keeps the stored teacher)
NOT_USED = {"teacher": ("name", "description", "speech", "student", "dictation", "student_limit", "text_reader")}
NOT_USED_BY_OTHERS = ("name", "description")


def config_fingerprint(config: dict, stage: str = "teacher") -> str:
    used = {k: v for k, v in config.items() if k not in NOT_USED.get(stage, NOT_USED_BY_OTHERS)}
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


_MODELS = ("teacher/model.safetensors", "student/model.safetensors", "student-naive/model.safetensors",
           "dictation/head.safetensors", "dictation-naive/head.safetensors", "text_reader/head.safetensors")
#: what a stage's result depends on in the run folder: it is restored only beside the same files
DEPENDS = {"student": ("teacher/model.safetensors",), "student-naive": ("teacher/model.safetensors",),
           "evaluate": _MODELS, "evaluate-test": _MODELS}


def inputs_hash(run: Path, stage: str) -> str | None:
    """sha256 over the files ``stage`` depends on in ``run`` (None when one is missing or none are)."""
    paths = [run / rel for rel in DEPENDS.get(stage, ())]
    if not paths or not all(p.is_file() for p in paths):
        return None
    digest = hashlib.sha256()
    for p in paths:
        digest.update(_file_sha256(p))
    return digest.hexdigest()


_FILE_SHAS: dict[tuple, bytes] = {}


def _file_sha256(path: Path) -> bytes:
    """sha256 of a file, once per (path, mtime, size): make_bundle asks about every stage at every step."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _FILE_SHAS:
        _FILE_SHAS[key] = hashlib.sha256(path.read_bytes()).digest()
    return _FILE_SHAS[key]


def store(stage: str, data: Path, run: Path, config: dict, timings: list[dict], store: Path | None = None) -> Path:
    """Copy a finished stage's folders of ``run`` into ``store/stage`` with its fingerprints (replacing an
    older one)."""
    if stage not in KEPT:
        raise ValueError(f"stage {stage!r} cannot be stored (storable: {', '.join(KEPT)})")
    missing = [f"{folder}/{f}" for folder, files in KEPT[stage].items() for f in files[:2]
               if not (run / folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run}: stage {stage} is not finished ({', '.join(missing)} missing)")
    target = (store or STORE) / stage
    tmp = target.with_name(f".{stage}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder, files in KEPT[stage].items():
        (tmp / folder).mkdir(parents=True)
        for name in files:
            if (run / folder / name).is_file():
                shutil.copy2(run / folder / name, tmp / folder / name)
    meta = {"stage": stage, "data": data_fingerprint(data), "config": config_fingerprint(config, stage),
            "inputs": inputs_hash(run, stage),
            "stored": time.strftime("%Y-%m-%d %H:%M:%S"), "timings": timings}
    (tmp / "stage.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def restore(stage: str, data: Path, run: Path, config: dict, store: Path | None = None) -> tuple[bool, str]:
    """(restored, why): copy ``store/stage``'s folders into ``run`` when its fingerprints match this data and
    config."""
    source = (store or STORE) / stage
    if not (source / "stage.json").is_file():
        return False, "nothing stored"
    meta = json.loads((source / "stage.json").read_text())
    if meta.get("config") != config_fingerprint(config, stage):
        return False, f"{source} was trained with another config"
    if stage in DEPENDS and (meta.get("inputs") is None or meta.get("inputs") != inputs_hash(run, stage)):
        return False, f"{source} was made from other models than those in {run} ({', '.join(DEPENDS[stage][:2])}…)"
    try:
        if meta.get("data") != data_fingerprint(data):
            return False, f"{source} was trained on other data (a different seed, size or generator)"
    except FileNotFoundError as exc:
        return False, str(exc)
    for folder, files in KEPT[stage].items():
        (run / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            if (source / folder / name).is_file():
                shutil.copy2(source / folder / name, run / folder / name)
    return True, f"restored from {source.relative_to(ROOT) if source.is_relative_to(ROOT) else source} " \
                 f"(stored {meta.get('stored')})"


def stored_timings(stage: str, store: Path | None = None) -> list[dict]:
    path = (store or STORE) / stage / "stage.json"
    return json.loads(path.read_text()).get("timings", []) if path.is_file() else []
