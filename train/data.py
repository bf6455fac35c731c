"""Readers for CT-RATE-layout and Speech-RATE-layout trees (the real datasets and ours alike).

Layouts (docs/design.md §2), under a root that holds ``dataset/`` (or is that folder):

* CT-RATE: ``dataset/{train,valid}[_fixed]/<split>_<patient>/<split>_<patient>_<scan>/<VolumeName>``
  with ``VolumeName`` like ``train_1_a_1.nii.gz``; CSVs in ``dataset/radiology_text_reports/``,
  ``dataset/multi_abnormality_labels/`` (labels, and our synthetic ``*_mentions.csv``) and
  ``dataset/metadata/``. Folders ending in ``_fixed`` (CT-RATE v2) already hold HU.
* Speech-RATE: ``dataset/{train,valid}/<patient>/<scan>/<volume stem>_findings.wav`` (16 kHz mono)
  plus the manifest ``dataset/{split}_manifest.csv`` written by ``train.synth.speechrate``;
  without a manifest the tree is walked (real recorded dictations work the same way).

Indexes read only CSVs and check file existence; volumes and audio are loaded lazily, one item
at a time, in ``__getitem__``. Every inconsistency a user can cause is an
:class:`engine.errors.DataError` whose message names the file and the problem.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError, SpeechCTWarning
from engine.io.ctrate_metadata import METADATA_COLUMNS, VolumeMeta, parse_metadata_row
from engine.labels import LABELS
from train.mentions import NOT_MENTIONED as MENTION_NOT_MENTIONED
from train.mentions import PRESENT as MENTION_PRESENT
from train.mentions import mentions_path, read_mentions

SPLITS = ("train", "valid")
SAMPLE_RATE = 16_000

#: CSV file names per split, as the real CT-RATE spells them (note "validation" vs "valid").
REPORTS_CSV = {"train": "train_reports.csv", "valid": "validation_reports.csv"}
LABELS_CSV = {"train": "train_predicted_labels.csv", "valid": "valid_predicted_labels.csv"}
METADATA_CSV = {"train": "train_metadata.csv", "valid": "validation_metadata.csv"}

REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
#: Speech-RATE manifest: the contract's columns first, then ours (``split``, ``gender``, ``text``).
MANIFEST_COLUMNS = ("volume", "path", "voice", "engine", "rate", "pitch", "augmentation", "duration")

_VOLUME_RE = re.compile(
    r"^(?P<split>[A-Za-z]+)_(?P<patient>[0-9]+)_(?P<scan>[A-Za-z]+)_(?P<recon>[0-9]+)(?P<ext>\.nii(\.gz)?)?$"
)


# --------------------------------------------------------------------------- layout helpers


@dataclass(frozen=True)
class VolumeName:
    """The parts of a CT-RATE volume name, e.g. ``train_1002_a_1.nii.gz``."""

    split: str  # "train"
    patient: str  # "train_1002"
    scan: str  # "train_1002_a"
    stem: str  # "train_1002_a_1"
    file_name: str  # "train_1002_a_1.nii.gz"


def parse_volume_name(name: str, source: str | Path | None = None) -> VolumeName:
    """Split ``train_1002_a_1[.nii.gz]`` into split, patient, scan and stem folders."""
    m = _VOLUME_RE.match(name.strip())
    if m is None:
        raise DataError(f"VolumeName {name!r} is not <split>_<patient>_<scan>_<recon>.nii.gz", source)
    split, patient, scan = m["split"], m["patient"], m["scan"]
    stem = f"{split}_{patient}_{scan}_{m['recon']}"
    return VolumeName(
        split, f"{split}_{patient}", f"{split}_{patient}_{scan}", stem, stem + (m["ext"] or ".nii.gz")
    )


def dataset_dir(root: str | Path) -> Path:
    """``root/dataset`` when present, else ``root`` itself if it looks like the dataset folder."""
    root = Path(root)
    if (root / "dataset").is_dir():
        return root / "dataset"
    if root.is_dir() and root.name == "dataset":
        return root
    raise DataError("no dataset/ folder here (expected a CT-RATE or Speech-RATE layout root)", root)


def speech_rate_wav_path(root: str | Path, volume_name: str) -> Path:
    """Where a volume's spoken Findings live in a Speech-RATE tree (the folders need not exist)."""
    v = parse_volume_name(volume_name)
    return Path(root) / "dataset" / v.split / v.patient / v.scan / f"{v.stem}_findings.wav"


def speech_rate_manifest_path(root: str | Path, split: str) -> Path:
    return Path(root) / "dataset" / f"{split}_manifest.csv"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


# --------------------------------------------------------------------------- CSV reading


def read_csv_rows(path: Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    """Rows of a CSV as dicts; DataError if the file or a required column is missing."""
    if not path.is_file():
        raise DataError(f"{what} file is missing", path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{what} lacks column(s) {', '.join(missing)}", path)
        try:
            return list(reader)
        except csv.Error as e:
            raise DataError(f"{what} is not valid CSV ({e})", path) from e


def _by_volume(rows: list[dict[str, str]], key: str, path: Path, what: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows):
        name = (row.get(key) or "").strip()
        if not name:
            raise DataError(f"{what} row {i + 2} has an empty {key}", path)
        if name in out:
            raise DataError(f"{what} lists {key} {name!r} twice", path)
        out[name] = row
    return out


def _label_table(path: Path, allowed: set[int], what: str) -> dict[str, np.ndarray]:
    """VolumeName → int8 array over :data:`engine.findings.LABELS`, checking names and values."""
    rows = read_csv_rows(path, ("VolumeName",), what)
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    columns = [c for c in header if c != "VolumeName"]
    missing = [lab for lab in LABELS if lab not in columns]
    unknown = [c for c in columns if c not in LABELS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise DataError(f"{what} label columns are wrong: {'; '.join(parts)}", path)
    table = {}
    for name, row in _by_volume(rows, "VolumeName", path, what).items():
        try:
            values = np.array([int(float(row[lab])) for lab in LABELS], dtype=np.int8)
        except (TypeError, ValueError) as e:
            raise DataError(f"{what} row {name!r} has a non-numeric label value", path) from e
        bad = set(values.tolist()) - allowed
        if bad:
            raise DataError(
                f"{what} row {name!r} has value(s) {sorted(bad)}; allowed {sorted(allowed)}", path
            )
        table[name] = values
    return table


def _mentions_from_labels(labels: np.ndarray) -> np.ndarray:
    """Without a mentions file (real CT-RATE before ``label-mentions``): a positive label as "present",
    every other finding as "not mentioned" (the labels say nothing of negation)."""
    return np.where(np.asarray(labels) > 0, MENTION_PRESENT, MENTION_NOT_MENTIONED).astype(np.int8)


def _handle_missing(problems: list[str], policy: str, summary: str, source: Path) -> None:
    """Raise (policy "error") or warn once (policy "skip") about dropped entries."""
    if not problems:
        return
    shown = ", ".join(problems[:3]) + (f" … ({len(problems)} in all)" if len(problems) > 3 else "")
    if policy == "error":
        raise DataError(f"{summary}: {shown}", source)
    warnings.warn(
        f"{source}: skipping {len(problems)} volume(s), {summary}: {shown}", SpeechCTWarning, stacklevel=3
    )


# --------------------------------------------------------------------------- Speech-RATE


@dataclass(frozen=True)
class SpeechRecord:
    """One spoken report in a Speech-RATE tree (no audio loaded)."""

    volume_name: str  # CT-RATE VolumeName, e.g. "train_1002_a_1.nii.gz"
    path: Path  # the WAV file
    voice: str | None = None  # None for walked trees (real recordings)
    engine: str | None = None
    rate_wpm: float | None = None
    pitch: float | None = None
    augmentation: str | None = None
    duration_s: float | None = None
    text: str | None = None  # what was read aloud, when the manifest records it


@dataclass
class SpeechRateItem:
    """A spoken report with its samples.

    ``audio`` is float32 mono in [-1, 1] at 16 kHz (resampled and down-mixed on reading if the
    file was not), or ``transform(audio)`` when the dataset has a transform. ``record`` holds
    the manifest fields (voice, rate, pitch, augmentation, text…).
    """

    volume_name: str
    audio: Any
    sample_rate: int
    duration_s: float
    record: SpeechRecord


def read_audio(path: Path) -> np.ndarray:
    """float32 mono 16 kHz samples of a spoken report (``engine.audio.load_audio``: any rate,
    any channel count, down-mixed and resampled). A missing file is a DataError (the tree
    disagrees with itself); an undecodable one is engine's AudioError."""
    from engine.audio import load_audio

    if not path.is_file():
        raise DataError("spoken report WAV is missing", path)
    return load_audio(path)


def _opt_float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


class SpeechRateIndex:
    """The spoken reports of one split: from ``dataset/{split}_manifest.csv``, else by walking.

    ``missing="error"`` raises DataError for a manifest row whose WAV is absent;
    ``"skip"`` drops such rows with one SpeechCTWarning.
    """

    def __init__(self, root: str | Path, split: str, *, missing: str = "error"):
        self.root = Path(root)
        self.split = _check_split(split)
        ds = dataset_dir(self.root)
        self.manifest = speech_rate_manifest_path(ds.parent, split)
        if self.manifest.is_file():
            self.records = self._from_manifest(missing)
        else:
            self.records = self._walk(ds / split)
        self._by_name = {r.volume_name: r for r in self.records}

    def _from_manifest(self, missing: str) -> list[SpeechRecord]:
        rows = read_csv_rows(self.manifest, ("volume", "path"), "Speech-RATE manifest")
        _by_volume(rows, "volume", self.manifest, "Speech-RATE manifest")  # duplicate check
        records, absent = [], []
        for row in rows:
            name = row["volume"].strip()
            parse_volume_name(name, self.manifest)
            path = Path(row["path"])
            path = path if path.is_absolute() else self.manifest.parent.parent / path
            if not path.is_file():
                absent.append(f"{name} ({path})")
                continue
            records.append(
                SpeechRecord(
                    volume_name=name,
                    path=path,
                    voice=row.get("voice") or None,
                    engine=row.get("engine") or None,
                    rate_wpm=_opt_float(row.get("rate")),
                    pitch=_opt_float(row.get("pitch")),
                    augmentation=row.get("augmentation") or None,
                    duration_s=_opt_float(row.get("duration")),
                    text=row.get("text") or None,
                )
            )
        _handle_missing(absent, missing, "WAV listed in the manifest is missing", self.manifest)
        return records

    def _walk(self, split_dir: Path) -> list[SpeechRecord]:
        if not split_dir.is_dir():
            raise DataError("Speech-RATE split folder is missing (and there is no manifest)", split_dir)
        records, seen = [], {}
        for path in sorted(split_dir.glob("*/*/*_findings.wav")):
            name = path.name.removesuffix("_findings.wav") + ".nii.gz"
            v = parse_volume_name(name, path)
            if (path.parent.name, path.parent.parent.name) != (v.scan, v.patient):
                raise DataError(f"WAV sits in the wrong folder (expected {v.patient}/{v.scan}/)", path)
            if name in seen:
                raise DataError(f"two WAVs for volume {name!r} (also {seen[name]})", path)
            seen[name] = path
            records.append(SpeechRecord(volume_name=name, path=path))
        if not records:
            raise DataError("no *_findings.wav files under <patient>/<scan>/", split_dir)
        return records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[SpeechRecord]:
        return iter(self.records)

    def __contains__(self, volume_name: str) -> bool:
        return volume_name in self._by_name

    def get(self, volume_name: str) -> SpeechRecord | None:
        return self._by_name.get(volume_name)


class SpeechRateDataset:
    """Map-style dataset of :class:`SpeechRateItem` (usable with torch's DataLoader and a collate)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        missing: str = "error",
    ):
        self.index = SpeechRateIndex(root, split, missing=missing)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> SpeechRateItem:
        record = self.index.records[i]
        audio = read_audio(record.path)
        duration = audio.size / SAMPLE_RATE
        out = self.transform(audio) if self.transform is not None else audio
        return SpeechRateItem(record.volume_name, out, SAMPLE_RATE, duration, record)


# --------------------------------------------------------------------------- CT-RATE


@dataclass(frozen=True)
class CTRateRecord:
    """Everything the CSVs say about one volume (no voxels loaded).

    ``labels``: int8 (18,) over :data:`engine.findings.LABELS`, CT-RATE's predicted 0/1 labels.
    ``mentions``: int8 (18,) class indices into :data:`engine.findings.DICTATION_CLASSES` (present,
    uncertain, absent, not mentioned) from the split's mentions file (:mod:`train.mentions`); without
    one (real CT-RATE before ``label-mentions``) a positive label is "present" and everything else "not
    mentioned" (see :attr:`CTRateIndex.has_mentions`).
    ``meta`` is None only for ``_fixed`` (v2) volumes without a metadata row.
    """

    volume_name: str
    split: str
    path: Path
    fixed: bool  # CT-RATE v2 "_fixed" folder: voxels already HU, never rescaled again
    findings: str
    impressions: str
    labels: np.ndarray
    mentions: np.ndarray
    meta: VolumeMeta | None
    audio_path: Path | None = None


@dataclass
class CTRateItem:
    """One training example.

    ``volume`` is an :class:`engine.volume.Volume` (HU, axis order (z, y, x), spacing (sz, sy, sx)
    in mm) or, with a transform, whatever it returns (e.g. ``engine.preprocess.prepare_ct``'s
    tensor). ``labels`` float32 (18,) 0/1; ``mentions`` int8 (18,) as in :class:`CTRateRecord`.
    ``audio`` float32 mono 16 kHz samples of the spoken Findings when the dataset was given a
    Speech-RATE root and ``load_audio=True``, else None.
    """

    volume_name: str
    volume: Any
    findings: str
    labels: np.ndarray
    mentions: np.ndarray
    audio: np.ndarray | None
    record: CTRateRecord


class CTRateIndex:
    """Joins a CT-RATE-layout split: reports, labels, mentions (if any), metadata, volume files
    and, given ``speech_root``, the Speech-RATE WAV of each volume.

    The reports CSV defines the split's volumes. ``missing="error"`` (default) raises a
    DataError for any volume that lacks its file, labels, metadata row or WAV; ``"skip"``
    drops those volumes with one SpeechCTWarning per kind of problem.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        speech_root: str | Path | None = None,
        missing: str = "error",
    ):
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.split = _check_split(split)
        self.dataset = dataset_dir(root)
        self.root = self.dataset.parent
        ds = self.dataset

        reports_path = ds / "radiology_text_reports" / REPORTS_CSV[split]
        reports = _by_volume(
            read_csv_rows(reports_path, ("VolumeName", "Findings_EN"), "reports"),
            "VolumeName",
            reports_path,
            "reports",
        )
        for name in reports:
            parse_volume_name(name, reports_path)

        labels_path = ds / "multi_abnormality_labels" / LABELS_CSV[split]
        labels = _label_table(labels_path, {0, 1}, "labels")
        extra = sorted(set(labels) - set(reports))
        if extra:
            _handle_missing(extra, missing, "labelled but absent from the reports CSV", labels_path)

        mentions_file = mentions_path(ds, split)
        mentions = read_mentions(ds, split)
        self.has_mentions = mentions is not None
        mentions = mentions or {}

        metadata_path = ds / "metadata" / METADATA_CSV[split]
        metadata_rows = (
            _by_volume(
                read_csv_rows(metadata_path, METADATA_COLUMNS, "metadata"),
                "VolumeName",
                metadata_path,
                "metadata",
            )
            if metadata_path.is_file()
            else None
        )

        volume_dirs = [d for d in (ds / split, ds / f"{split}_fixed") if d.is_dir()]
        if not volume_dirs:
            raise DataError(f"volume folder {split}/ (or {split}_fixed/) is missing", ds)

        speech = SpeechRateIndex(speech_root, split, missing=missing) if speech_root is not None else None

        problems: dict[str, list[str]] = {k: [] for k in ("file", "labels", "mentions", "metadata", "audio")}
        records = []
        for name, row in reports.items():
            v = parse_volume_name(name, reports_path)
            path = next(
                (p for d in volume_dirs if (p := d / v.patient / v.scan / v.file_name).is_file()),
                None,
            )
            if path is None:
                problems["file"].append(name)
                continue
            fixed = any(part.endswith("_fixed") for part in path.relative_to(ds).parts[:-1])
            if name not in labels:
                problems["labels"].append(name)
                continue
            if self.has_mentions and name not in mentions:
                problems["mentions"].append(name)
                continue
            meta = None
            if metadata_rows is not None and name in metadata_rows:
                meta = parse_metadata_row(metadata_rows[name], metadata_path)
            elif not fixed:
                # v1 headers cannot be trusted (CT-CLIP issue #28): no metadata, no volume.
                problems["metadata"].append(name)
                continue
            audio_path = None
            if speech is not None:
                rec = speech.get(name)
                if rec is None:
                    problems["audio"].append(name)
                    continue
                audio_path = rec.path
            records.append(
                CTRateRecord(
                    volume_name=name,
                    split=split,
                    path=path,
                    fixed=fixed,
                    findings=(row.get("Findings_EN") or "").strip(),
                    impressions=(row.get("Impressions_EN") or "").strip(),
                    labels=labels[name],
                    mentions=mentions[name] if self.has_mentions else _mentions_from_labels(labels[name]),
                    meta=meta,
                    audio_path=audio_path,
                )
            )
        _handle_missing(
            problems["file"], missing, "volume listed in the reports CSV but its file is missing", ds / split
        )
        _handle_missing(problems["labels"], missing, "volume has no row in the labels CSV", labels_path)
        _handle_missing(problems["mentions"], missing, "volume has no row in the mentions CSV", mentions_file)
        _handle_missing(
            problems["metadata"],
            missing,
            "volume has no metadata row (slope, intercept, spacing)",
            metadata_path,
        )
        if speech is not None:
            _handle_missing(problems["audio"], missing, "volume has no spoken report", Path(speech_root))
        if not records:
            raise DataError(f"no usable volumes in split {split!r}", reports_path)
        self.records: list[CTRateRecord] = records
        self._by_name = {r.volume_name: i for i, r in enumerate(records)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> CTRateRecord:
        return self.records[i]

    def __iter__(self) -> Iterator[CTRateRecord]:
        return iter(self.records)

    def index_of(self, volume_name: str) -> int:
        try:
            return self._by_name[volume_name]
        except KeyError:
            raise DataError(f"volume {volume_name!r} is not in split {self.split!r}", self.dataset) from None

    def labels_matrix(self) -> np.ndarray:
        """int8 (n_volumes, 18) labels in index order (for metrics and class balance)."""
        return np.stack([r.labels for r in self.records])


def load_record_volume(record: CTRateRecord, loader: Callable[..., Any] | None = None):
    """The record's Volume in HU via ``engine.io.load_volume``.

    v1 volumes get the metadata CSV's slope, intercept and spacing as overrides (their NIfTI
    headers cannot be trusted); ``_fixed`` v2 volumes already hold HU and are read as stored
    (rescaling them again is CT-CLIP issue #50).
    """
    if loader is None:
        from engine.io import load_volume as loader
    if record.fixed or record.meta is None:
        return loader(record.path)
    return loader(
        record.path, slope=record.meta.slope, intercept=record.meta.intercept, spacing=record.meta.spacing
    )


class CTRateDataset:
    """Map-style dataset of :class:`CTRateItem`, loading one volume (and WAV) per ``__getitem__``.

    ``transform`` maps the loaded Volume to what the trainer wants (e.g.
    ``functools.partial(engine.preprocess.prepare_ct, spec=...)``). ``loader`` replaces
    ``engine.io.load_volume`` (same keyword overrides), e.g. for a cache.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transform: Callable[[Any], Any] | None = None,
        speech_root: str | Path | None = None,
        load_audio: bool = True,
        missing: str = "error",
        loader: Callable[..., Any] | None = None,
    ):
        self.index = CTRateIndex(root, split, speech_root=speech_root, missing=missing)
        self.transform = transform
        self.load_audio = load_audio and speech_root is not None
        self.loader = loader

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> CTRateItem:
        record = self.index[i]
        volume = load_record_volume(record, self.loader)
        if self.transform is not None:
            volume = self.transform(volume)
        audio = read_audio(record.audio_path) if self.load_audio and record.audio_path is not None else None
        return CTRateItem(
            volume_name=record.volume_name,
            volume=volume,
            findings=record.findings,
            labels=record.labels.astype(np.float32),
            mentions=record.mentions,
            audio=audio,
            record=record,
        )


# --------------------------------------------------------------------------- spoken prompts


@dataclass(frozen=True)
class SpokenPrompt:
    """One recording of a zero-shot prompt (``"{label} is present."`` / ``"... is not present."``)."""

    label: str  # one of engine.findings.LABELS
    polarity: str  # "present" | "absent"
    voice: str
    path: Path
    text: str


def read_spoken_prompts(root: str | Path) -> list[SpokenPrompt]:
    """The spoken prompt set written by ``train.synth.speechrate.synthesize_prompts``.

    ``root`` is the Speech-RATE root (holding ``prompts/manifest.csv``) or the manifest itself.
    Ordered by label (CT-RATE order), polarity (present first), voice; every voice must have
    read both prompts of all 18 findings, so the set stacks into ``[18, voices]`` per polarity.
    """
    root = Path(root)
    manifest = root if root.suffix == ".csv" else root / "prompts" / "manifest.csv"
    rows = read_csv_rows(manifest, ("label", "polarity", "voice", "path"), "spoken prompt manifest")
    prompts, seen = [], set()
    for i, row in enumerate(rows):
        label, polarity, voice = row["label"], row["polarity"], row["voice"]
        if label not in LABELS or polarity not in ("present", "absent"):
            raise DataError(
                f"spoken prompt manifest row {i + 2}: unknown label/polarity {label!r}/{polarity!r}", manifest
            )
        key = (label, polarity, voice)
        if key in seen:
            raise DataError(f"spoken prompt manifest lists {label!r} {polarity} by {voice!r} twice", manifest)
        seen.add(key)
        path = manifest.parent / row["path"]
        if not path.is_file():
            raise DataError(f"spoken prompt WAV is missing ({label}, {polarity}, {voice})", path)
        text = row.get("text") or ""
        prompts.append(SpokenPrompt(label, polarity, voice, path, text))
    voices = sorted({p.voice for p in prompts})
    lacking = [
        f"{lab}/{pol}/{v}"
        for lab in LABELS
        for pol in ("present", "absent")
        for v in voices
        if (lab, pol, v) not in seen
    ]
    if lacking or not prompts:
        shown = ", ".join(lacking[:3]) + (f" … ({len(lacking)} in all)" if len(lacking) > 3 else "")
        raise DataError(f"spoken prompt set is incomplete: {shown or 'no rows'}", manifest)
    order = {lab: k for k, lab in enumerate(LABELS)}
    return sorted(prompts, key=lambda p: (order[p.label], p.polarity != "present", p.voice))
