"""Speech-RATE writer: the Findings of a CT-RATE-layout tree read aloud by offline voices.

Output (docs/design.md §2): ``<out_root>/dataset/{split}/<patient>/<scan>/<volume stem>_findings.wav``,
16 kHz mono 16-bit PCM, plus ``<out_root>/dataset/{split}_manifest.csv`` with the columns of
:data:`train.data.MANIFEST_COLUMNS` followed by ``split, gender, text`` (``text`` is exactly what
was read aloud, the distillation target).

Every choice for a report (voice, rate, pitch, augmentation and its noise seed) comes from a
random generator seeded by (seed, split, volume), so one report's audio does not depend on
which others exist, on their order, or on the number of workers: same seed, same bytes.
Runs resume: a WAV that exists with a matching manifest (or journal) row is not made again.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from engine.atomic import atomic_path, atomic_write
from engine.errors import DataError
from engine.labels import LABELS, prompt_pair
from train.data import (
    MANIFEST_COLUMNS,
    REPORTS_CSV,
    _check_split,
    dataset_dir,
    read_csv_rows,
    speech_rate_manifest_path,
    speech_rate_wav_path,
)
from train.synth.augment import AugmentChoice, AugmentSpec, limit_peak
from train.synth.voices import (
    PITCH_RANGE,
    RATE_RANGE_WPM,
    SAMPLE_RATE,
    Voice,
    check_voice,
    get_voice,
    normalize_for_speech,
    resolve_voices,
    speak,
)

SPEECH_RATE_COLUMNS = (*MANIFEST_COLUMNS, "split", "gender", "text")
#: One Whisper window; the summary counts clips longer than this.
WINDOW_S = 30.0
PROMPT_COLUMNS = ("label", "polarity", "voice", "path", "engine", "rate", "pitch", "duration", "text")


@dataclass
class SpeechRateSummary:
    """What a run did. ``audio_hours`` counts every WAV in the manifests (made now or before)."""

    out_root: Path
    written: int = 0
    skipped: int = 0
    empty_findings: int = 0  # reports whose Findings_EN is empty: nothing to read, no WAV
    per_split: dict[str, int] = field(default_factory=dict)
    audio_hours: float = 0.0
    longest_s: float = 0.0
    over_window: int = 0  # clips longer than one 30 s Whisper window (train.synth.reports keeps Findings within one by default)
    elapsed_s: float = 0.0
    manifests: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.per_split.items())
        return (
            f"Speech-RATE at {self.out_root}: {splits} spoken reports ({self.audio_hours:.2f} h of audio); "
            f"longest {self.longest_s:.1f} s, {self.over_window} over {WINDOW_S:g} s; "
            f"{self.written} made, {self.skipped} already there, {self.empty_findings} empty Findings skipped; "
            f"{self.elapsed_s:.1f} s"
        )


@dataclass(frozen=True)
class _Job:
    """One WAV to make. ``row`` is its manifest row without ``duration``."""

    key: str
    text: str
    voice: str
    rate: int
    pitch: int
    augment: AugmentChoice | None
    wav: Path
    row: dict


def _rng(*parts: object) -> np.random.Generator:
    """A generator that depends only on ``parts`` (stable across runs and processes)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _draw_reading(rng: np.random.Generator, voices: list[Voice]) -> tuple[Voice, int, int]:
    voice = voices[int(rng.integers(len(voices)))]
    rate = int(rng.integers(RATE_RANGE_WPM[0], RATE_RANGE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    return voice, rate, pitch


#: espeak reads reports slower than its nominal words per minute (a pause at every full stop):
#: measured 1.07–1.28× the nominal duration on train.synth's Findings (MBROLA 0.91–1.05×); 1.3
#: is the margin.
SLOWDOWN = 1.3


def fit_rate(text: str, rate_wpm: int, window_s: float | None) -> int:
    """The drawn rate, raised (at most to the range's top) so the reading should fit ``window_s``."""
    if window_s is None:
        return rate_wpm
    words = len(normalize_for_speech(text).split())
    needed = int(np.ceil(words * 60.0 * SLOWDOWN / window_s))
    return int(min(max(rate_wpm, needed), RATE_RANGE_WPM[1]))


def _write_wav_atomic(path: Path, audio: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _render(job: _Job) -> tuple[str, float]:
    """Synthesise, augment and write one WAV; returns (key, duration in s). Runs in workers."""
    audio = speak(job.text, get_voice(job.voice), job.rate, job.pitch)
    audio = job.augment.apply(audio, SAMPLE_RATE) if job.augment is not None else limit_peak(audio)
    _write_wav_atomic(job.wav, audio)
    return job.key, round(audio.size / SAMPLE_RATE, 4)


def _read_rows_tolerant(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest or journal, ignoring a truncated last line from an interrupted run."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        try:
            return [r for r in csv.DictReader(f) if None not in r and all(v is not None for v in r.values())]
        except csv.Error:
            return []


def _write_csv_atomic(path: Path, columns: tuple[str, ...], rows: Iterable[dict]) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _run_jobs(
    jobs: list[_Job],
    manifest: Path,
    columns: tuple[str, ...],
    key_column: str | tuple[str, ...],
    *,
    workers: int,
    progress: bool,
    desc: str,
) -> tuple[list[dict], int, int]:
    """Make the WAVs not already done, journal each as it lands, then write the manifest.

    Returns (manifest rows, written, skipped).
    """

    def key_of(row: dict) -> str:
        cols = (key_column,) if isinstance(key_column, str) else key_column
        return "/".join(str(row.get(c, "")) for c in cols)

    journal = manifest.with_name(f".{manifest.name}.partial")
    done: dict[str, dict] = {}
    for row in _read_rows_tolerant(manifest) + _read_rows_tolerant(journal):
        done[key_of(row)] = row

    rows: dict[str, dict] = {}
    todo: list[_Job] = []
    for job in jobs:
        old = done.get(job.key)
        same = old is not None and all(str(old.get(k, "")) == str(v) for k, v in job.row.items())
        if same and job.wav.is_file():
            rows[job.key] = {**job.row, "duration": old["duration"]}
        else:
            todo.append(job)
    skipped = len(rows)

    by_key = {job.key: job for job in todo}
    manifest.parent.mkdir(parents=True, exist_ok=True)
    new_journal = not journal.is_file() or journal.stat().st_size == 0
    with (
        open(journal, "a", newline="", encoding="utf-8") as jf,
        tqdm(total=len(todo), disable=not progress, desc=desc, unit="wav") as bar,
    ):
        writer = csv.DictWriter(jf, fieldnames=columns)
        if new_journal:
            writer.writeheader()

        def record(key: str, duration: float) -> None:
            row = {**by_key[key].row, "duration": f"{duration:.4f}"}
            rows[key] = row
            writer.writerow(row)
            jf.flush()
            bar.update(1)

        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                record(*_render(job))
        else:
            # spawn, not fork: the caller may hold torch threads, which fork would copy mid-state.
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_render, job) for job in todo]
                for fut in as_completed(futures):
                    record(*fut.result())

    ordered = [rows[job.key] for job in jobs]
    _write_csv_atomic(manifest, columns, ordered)
    journal.unlink(missing_ok=True)
    return ordered, len(todo), skipped


def _report_findings(ctrate_root: Path, split: str) -> list[tuple[str, str]]:
    """(VolumeName, text to read aloud) of a split's reports CSV, in file order: the synthetic set's
    dictation (``*_dictations.csv``: spoken commands, indication, impression) where there is one,
    else Findings_EN (real CT-RATE)."""
    ds = dataset_dir(ctrate_root)
    path = ds / "radiology_text_reports" / REPORTS_CSV[split]
    rows = read_csv_rows(path, ("VolumeName", "Findings_EN"), "reports")
    dictations: dict[str, str] = {}
    dpath = ds / "radiology_text_reports" / f"{split}_dictations.csv"
    if dpath.is_file():
        dictations = {r["VolumeName"].strip(): (r["Dictation_EN"] or "").strip()
                      for r in read_csv_rows(dpath, ("VolumeName", "Dictation_EN"), "dictations")}
    seen: set[str] = set()
    out = []
    for row in rows:
        name = row["VolumeName"].strip()
        if name in seen:
            raise DataError(f"reports lists VolumeName {name!r} twice", path)
        seen.add(name)
        findings = (row["Findings_EN"] or "").strip()
        out.append((name, dictations.get(name, findings) if findings else ""))
    return out


def synthesize_speech_rate(
    ctrate_root: str | Path,
    out_root: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "valid"),
    seed: int,
    workers: int = 1,
    voices: list[str] | None = None,
    augment: AugmentSpec | None = None,
    progress: bool = True,
    fit_window_s: float | None = WINDOW_S - 1.0,
) -> SpeechRateSummary:
    """Read every split's Findings_EN aloud into a Speech-RATE tree under ``out_root``.

    ``voices`` (ids from :data:`train.synth.voices.VOICES`) overrides the per-split default
    (train voices for train, the held-out validation voices for valid). ``augment`` adds noise,
    reverb and gain per :class:`AugmentSpec`; ``None`` writes clean speech. ``fit_window_s``
    raises the drawn rate of long reports (up to 190 wpm) so that they fit one Whisper window;
    ``None`` keeps every drawn rate. The summary counts what still runs over 30 s.
    """
    start = time.perf_counter()
    out_root = Path(out_root)
    summary = SpeechRateSummary(out_root=out_root)
    total_seconds = 0.0
    for split in splits:
        _check_split(split)
        split_voices = resolve_voices(voices, split)
        for v in split_voices:
            check_voice(v)  # fail before any work, not in the middle of a pool
        jobs = []
        for name, text in _report_findings(Path(ctrate_root), split):
            if not text:
                summary.empty_findings += 1
                continue
            rng = _rng(seed, split, name)
            voice, rate, pitch = _draw_reading(rng, split_voices)
            rate = fit_rate(text, rate, fit_window_s)
            choice = augment.draw(rng) if augment is not None else None
            wav = speech_rate_wav_path(out_root, name)
            row = {
                "volume": name,
                "path": wav.relative_to(out_root).as_posix(),
                "voice": voice.id,
                "engine": voice.engine,
                "rate": rate,
                "pitch": pitch,
                "augmentation": choice.describe() if choice is not None else "none",
                "split": split,
                "gender": voice.gender,
                "text": text,
            }
            jobs.append(_Job(name, text, voice.id, rate, pitch, choice, wav, row))
        manifest = speech_rate_manifest_path(out_root, split)
        rows, written, skipped = _run_jobs(
            jobs,
            manifest,
            SPEECH_RATE_COLUMNS,
            "volume",
            workers=workers,
            progress=progress,
            desc=f"Speech-RATE {split}",
        )
        summary.written += written
        summary.skipped += skipped
        summary.per_split[split] = len(rows)
        summary.manifests[split] = manifest
        durations = [float(r["duration"]) for r in rows]
        total_seconds += sum(durations)
        summary.longest_s = max([summary.longest_s, *durations])
        summary.over_window += sum(d > WINDOW_S for d in durations)
    summary.audio_hours = total_seconds / 3600.0
    summary.elapsed_s = time.perf_counter() - start
    return summary


def prompt_slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def synthesize_prompts(
    out_root: str | Path,
    *,
    voices: list[str] | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Speak CT-CLIP's zero-shot prompt pairs for all 18 findings in every voice.

    Writes ``<out_root>/prompts/<voice>/<finding>_{present,absent}.wav`` and returns the path of
    ``<out_root>/prompts/manifest.csv`` (columns :data:`PROMPT_COLUMNS`; polarity is
    ``present`` or ``absent``). ``voices`` defaults to every voice, train and validation.
    """
    out_root = Path(out_root)
    chosen = (
        [get_voice(v) for v in voices]
        if voices is not None
        else resolve_voices(None, "train") + resolve_voices(None, "valid")
    )
    for v in chosen:
        check_voice(v)
    base = out_root / "prompts"
    jobs = []
    for voice in chosen:
        for label in LABELS:
            for polarity, text in zip(("present", "absent"), prompt_pair(label)):
                rng = _rng(seed, "prompt", voice.id, label, polarity)
                rate = int(rng.integers(RATE_RANGE_WPM[0], RATE_RANGE_WPM[1] + 1))
                pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
                wav = base / voice.id / f"{prompt_slug(label)}_{polarity}.wav"
                row = {
                    "label": label,
                    "polarity": polarity,
                    "voice": voice.id,
                    "path": wav.relative_to(base).as_posix(),
                    "engine": voice.engine,
                    "rate": rate,
                    "pitch": pitch,
                    "text": text,
                }
                jobs.append(
                    _Job(f"{label}/{polarity}/{voice.id}", text, voice.id, rate, pitch, None, wav, row)
                )
    manifest = base / "manifest.csv"
    _run_jobs(
        jobs,
        manifest,
        PROMPT_COLUMNS,
        ("label", "polarity", "voice"),
        workers=workers,
        progress=progress,
        desc="spoken prompts",
    )
    return manifest
