"""Speech-RATE writer, spoken prompts and acoustic augmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import DataError
from engine.labels import LABELS
from train.data import MANIFEST_COLUMNS, read_spoken_prompts
from train.synth import augment as A
from train.synth.augment import AugmentChoice, AugmentSpec
from train.synth.speechrate import (
    PROMPT_COLUMNS,
    SPEECH_RATE_COLUMNS,
    synthesize_prompts,
    synthesize_speech_rate,
)
from train.synth.voices import SAMPLE_RATE, get_voice, train_voices, valid_voices

REPORTS = {
    "train": [
        ("train_1_a_1.nii.gz", "Cardiomegaly. A 6 mm nodule."),
        ("train_1_a_2.nii.gz", "No pleural effusion."),
        ("train_2_a_1.nii.gz", ""),  # empty Findings: skipped, counted
        ("train_3_b_1.nii.gz", "Mild emphysema."),
        ("train_4_a_1.nii.gz", "Bronchiectasis is seen."),
    ],
    "valid": [
        ("valid_1_a_1.nii.gz", "Hiatal hernia."),
        ("valid_2_a_1.nii.gz", "Lung opacity in the left lower lobe."),
        ("valid_3_a_1.nii.gz", "No consolidation."),
    ],
}


def write_reports(root: Path, reports=REPORTS) -> Path:
    folder = root / "dataset" / "radiology_text_reports"
    folder.mkdir(parents=True, exist_ok=True)
    for split, file in (("train", "train_reports.csv"), ("valid", "validation_reports.csv")):
        with open(folder / file, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
            )
            for name, text in reports[split]:
                w.writerow([name, "Cough.", "Non-contrast chest CT.", text, "See findings."])
    return root


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ctrate(tmp_path_factory) -> Path:
    return write_reports(tmp_path_factory.mktemp("ctrate"))


@pytest.fixture(scope="module")
def made(ctrate, tmp_path_factory):
    out = tmp_path_factory.mktemp("speechrate")
    summary = synthesize_speech_rate(ctrate, out, seed=7, progress=False)
    return out, summary


def test_layout_manifest_and_audio(made):
    out, summary = made
    assert summary.per_split == {"train": 4, "valid": 3}
    assert (summary.written, summary.skipped, summary.empty_findings) == (7, 0, 1)
    wav = out / "dataset/train/train_1/train_1_a/train_1_a_1_findings.wav"
    assert wav.is_file()
    rows = read_manifest(out / "dataset/train_manifest.csv")
    assert tuple(rows[0]) == SPEECH_RATE_COLUMNS
    assert SPEECH_RATE_COLUMNS[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    assert [r["volume"] for r in rows] == [
        "train_1_a_1.nii.gz",
        "train_1_a_2.nii.gz",
        "train_3_b_1.nii.gz",
        "train_4_a_1.nii.gz",
    ]
    hours = 0.0
    for row in rows + read_manifest(out / "dataset/valid_manifest.csv"):
        info = sf.info(str(out / row["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert float(row["duration"]) == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-3)
        assert 140 <= int(row["rate"]) <= 190 and 35 <= int(row["pitch"]) <= 65
        assert row["augmentation"] == "none"
        assert get_voice(row["voice"]).engine == row["engine"]
        hours += float(row["duration"]) / 3600
        audio, _ = sf.read(str(out / row["path"]), dtype="float32")
        assert np.sqrt(np.mean(audio**2)) > 0.02
        assert np.max(np.abs(audio)) <= A.PEAK_LIMIT + 1e-3
    assert summary.audio_hours == pytest.approx(hours, rel=1e-3)
    assert 0.5 < summary.longest_s < 5 and summary.over_window == 0
    assert "7 made" in str(summary) and "train 4, valid 3" in str(summary)
    assert rows[0]["text"] == "Cardiomegaly. A 6 mm nodule."


def test_validation_voices_never_read_training_reports(made):
    out, _ = made
    train_ids = {v.id for v in train_voices()}
    valid_ids = {v.id for v in valid_voices()}
    assert {r["voice"] for r in read_manifest(out / "dataset/train_manifest.csv")} <= train_ids
    assert {r["voice"] for r in read_manifest(out / "dataset/valid_manifest.csv")} <= valid_ids


def test_same_seed_same_bytes(ctrate, made, tmp_path):
    out, _ = made
    again = synthesize_speech_rate(ctrate, tmp_path, seed=7, splits=("train",), progress=False)
    assert again.written == 4
    for row in read_manifest(out / "dataset/train_manifest.csv"):
        assert (tmp_path / row["path"]).read_bytes() == (out / row["path"]).read_bytes()
    assert (tmp_path / "dataset/train_manifest.csv").read_bytes() == (
        out / "dataset/train_manifest.csv"
    ).read_bytes()


@pytest.mark.slow  # spawning the process pool costs seconds of imports
def test_same_seed_same_bytes_with_a_process_pool(ctrate, made, tmp_path):
    out, _ = made
    again = synthesize_speech_rate(ctrate, tmp_path, seed=7, workers=2, splits=("train",), progress=False)
    assert again.written == 4
    for row in read_manifest(out / "dataset/train_manifest.csv"):
        assert (tmp_path / row["path"]).read_bytes() == (out / row["path"]).read_bytes()
    assert (tmp_path / "dataset/train_manifest.csv").read_bytes() == (
        out / "dataset/train_manifest.csv"
    ).read_bytes()


def test_another_seed_reads_differently(ctrate, made, tmp_path):
    out, _ = made
    synthesize_speech_rate(ctrate, tmp_path, seed=8, splits=("train",), progress=False)
    a = read_manifest(out / "dataset/train_manifest.csv")
    b = read_manifest(tmp_path / "dataset/train_manifest.csv")
    assert [(r["voice"], r["rate"], r["pitch"]) for r in a] != [
        (r["voice"], r["rate"], r["pitch"]) for r in b
    ]


def test_resume_skips_finished_files(ctrate, tmp_path):
    first = synthesize_speech_rate(ctrate, tmp_path, seed=3, splits=("valid",), progress=False)
    assert first.written == 3
    rows = read_manifest(tmp_path / "dataset/valid_manifest.csv")
    paths = [tmp_path / r["path"] for r in rows]
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()
    second = synthesize_speech_rate(ctrate, tmp_path, seed=3, splits=("valid",), progress=False)
    assert (second.written, second.skipped) == (1, 2)
    assert paths[0].stat().st_mtime_ns == stamps[paths[0]] and paths[2].stat().st_mtime_ns == stamps[paths[2]]
    assert read_manifest(tmp_path / "dataset/valid_manifest.csv") == rows
    # an interrupted run: no manifest yet, only the journal (with a torn last line)
    manifest = tmp_path / "dataset/valid_manifest.csv"
    journal = manifest.with_name(".valid_manifest.csv.partial")
    journal.write_text(manifest.read_text() + "valid_3_a_1.nii.gz,dataset/val")
    manifest.unlink()
    third = synthesize_speech_rate(ctrate, tmp_path, seed=3, splits=("valid",), progress=False)
    assert (third.written, third.skipped) == (0, 3)
    assert not journal.exists()
    # a different seed changes the plan, so nothing is reused
    fourth = synthesize_speech_rate(ctrate, tmp_path, seed=4, splits=("valid",), progress=False)
    assert fourth.written == 3


def test_augmentation_is_applied_and_recorded(ctrate, made, tmp_path):
    out, _ = made
    spec = AugmentSpec(p_noise=1.0, p_reverb=1.0, p_gain=1.0, noise_kinds=("pink",))
    synthesize_speech_rate(ctrate, tmp_path, seed=7, splits=("valid",), augment=spec, progress=False)
    clean = read_manifest(out / "dataset/valid_manifest.csv")
    noisy = read_manifest(tmp_path / "dataset/valid_manifest.csv")
    for c, n in zip(clean, noisy):
        assert (c["voice"], c["rate"], c["pitch"]) == (n["voice"], n["rate"], n["pitch"])
        assert n["augmentation"].startswith("reverb:rt60=") and ";noise:pink@" in n["augmentation"]
        assert ";gain:" in n["augmentation"]
        a, _ = sf.read(str(out / c["path"]), dtype="float32")
        b, _ = sf.read(str(tmp_path / n["path"]), dtype="float32")
        assert a.size == b.size and not np.allclose(a, b, atol=1e-3)


def test_voice_override_and_unknown_split(ctrate, tmp_path):
    summary = synthesize_speech_rate(
        ctrate, tmp_path, seed=1, splits=("valid",), voices=["us-f2"], progress=False
    )
    assert {r["voice"] for r in read_manifest(summary.manifests["valid"])} == {"us-f2"}
    with pytest.raises(DataError, match="unknown split 'test'"):
        synthesize_speech_rate(ctrate, tmp_path, seed=1, splits=("test",), progress=False)
    with pytest.raises(DataError, match="reports file is missing"):
        synthesize_speech_rate(tmp_path, tmp_path / "x", seed=1, splits=("valid",), progress=False)


def test_duplicate_report_is_a_data_error(tmp_path):
    reports = {"train": [("train_1_a_1.nii.gz", "A."), ("train_1_a_1.nii.gz", "B.")], "valid": []}
    write_reports(tmp_path, reports)
    with pytest.raises(DataError, match="lists VolumeName 'train_1_a_1.nii.gz' twice"):
        synthesize_speech_rate(tmp_path, tmp_path / "out", seed=1, splits=("train",), progress=False)


def test_spoken_prompts_cover_every_finding_and_polarity(tmp_path):
    manifest = synthesize_prompts(tmp_path, voices=["us-f2", "mb-us3"], seed=0)
    rows = read_manifest(manifest)
    assert tuple(rows[0]) == PROMPT_COLUMNS
    assert len(rows) == len(LABELS) * 2 * 2
    assert {r["label"] for r in rows} == set(LABELS)
    assert {(r["polarity"], r["voice"]) for r in rows} == {
        (p, v) for p in ("present", "absent") for v in ("us-f2", "mb-us3")
    }
    row = next(r for r in rows if r["label"] == "Cardiomegaly" and r["polarity"] == "absent")
    assert row["text"] == "Cardiomegaly is not present."
    audio, rate = sf.read(str(manifest.parent / row["path"]))
    assert rate == SAMPLE_RATE and 0.8 < audio.size / rate < 3.5
    prompts = read_spoken_prompts(tmp_path)
    assert [(p.label, p.polarity, p.voice) for p in prompts[:4]] == [
        ("Medical material", "present", "mb-us3"),
        ("Medical material", "present", "us-f2"),
        ("Medical material", "absent", "mb-us3"),
        ("Medical material", "absent", "us-f2"),
    ]
    assert prompts[0].text == "Medical material is present." and prompts[0].path.is_file()
    stamp = (manifest.parent / row["path"]).stat().st_mtime_ns
    assert synthesize_prompts(tmp_path, voices=["us-f2", "mb-us3"], seed=0) == manifest
    assert (manifest.parent / row["path"]).stat().st_mtime_ns == stamp  # resumed, not remade
    (manifest.parent / row["path"]).unlink()
    with pytest.raises(DataError, match=r"spoken prompt WAV is missing \(Cardiomegaly, absent, "):
        read_spoken_prompts(manifest)
    with open(manifest) as f:
        lines = f.readlines()
    manifest.write_text("".join(line for line in lines if "Cardiomegaly is not present" not in line))
    with pytest.raises(DataError, match="spoken prompt set is incomplete: Cardiomegaly/absent/mb-us3"):
        read_spoken_prompts(manifest)


# --------------------------------------------------------------------------- augmentation


def _tone_speech(seconds=1.0) -> np.ndarray:
    """A speech-like test signal: a 200 Hz tone gated on and off at a syllable rate."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)


@pytest.mark.parametrize("kind", A.NOISE_KINDS)
def test_noise_reaches_the_asked_snr(kind):
    clean = _tone_speech().astype(np.float64)
    noisy = A.add_noise(clean, kind, 12.0, SAMPLE_RATE, np.random.default_rng(0))
    noise = noisy - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert snr == pytest.approx(12.0, abs=0.01)


def test_pink_noise_has_more_low_than_high_frequency_power():
    noise = A.pink_noise(2**15, np.random.default_rng(1))
    power = np.abs(np.fft.rfft(noise)) ** 2
    low, high = power[10:200].mean(), power[-2000:].mean()
    assert low > 20 * high
    assert np.std(noise) == pytest.approx(1.0, rel=1e-6)


def test_reverb_keeps_length_and_power_and_smears_in_time():
    clean = _tone_speech().astype(np.float64)
    wet = A.add_reverb(clean, 0.5, SAMPLE_RATE, np.random.default_rng(2))
    assert wet.size == clean.size
    assert np.mean(wet**2) == pytest.approx(np.mean(clean**2), rel=1e-6)
    gaps = np.sin(2 * np.pi * 4 * np.arange(clean.size) / SAMPLE_RATE) <= 0
    assert np.mean(np.abs(wet[gaps])) > 10 * np.mean(np.abs(clean[gaps])) + 1e-4  # the room fills the pauses
    ir = A.room_impulse_response(0.5, SAMPLE_RATE, np.random.default_rng(3))
    assert ir.size == SAMPLE_RATE // 2 and ir[0] == np.max(np.abs(ir))
    env_early, env_late = np.abs(ir[100:1000]).mean(), np.abs(ir[-1000:]).mean()
    assert env_late < env_early / 100  # ≥ 40 dB down by the end of the tail


def test_choice_describes_and_applies_exactly_what_it_holds():
    clean = _tone_speech()
    assert AugmentChoice().describe() == "none"
    gain_only = AugmentChoice(gain_db=-6.0)
    assert gain_only.describe() == "gain:-6dB"
    np.testing.assert_allclose(gain_only.apply(clean, SAMPLE_RATE), clean * 10 ** (-6 / 20), rtol=1e-5)
    loud = AugmentChoice(gain_db=12.0).apply(clean, SAMPLE_RATE)
    assert np.max(np.abs(loud)) == pytest.approx(A.PEAK_LIMIT)  # limited, never clipped
    full = AugmentChoice(noise="white", snr_db=20.0, rt60_s=0.3, gain_db=1.5, seed=5)
    assert full.describe() == "reverb:rt60=0.3s;noise:white@20dB;gain:+1.5dB"
    assert np.array_equal(full.apply(clean, SAMPLE_RATE), full.apply(clean, SAMPLE_RATE))


def test_spec_draws_within_ranges_and_validates():
    spec = AugmentSpec(p_noise=0.5, p_reverb=0.5, p_gain=0.5)
    rng = np.random.default_rng(0)
    choices = [spec.draw(rng) for _ in range(200)]
    with_noise = [c for c in choices if c.noise is not None]
    assert 60 < len(with_noise) < 140
    assert all(10 <= c.snr_db <= 30 for c in with_noise)
    assert all(0.15 <= c.rt60_s <= 0.6 for c in choices if c.rt60_s is not None)
    assert {c.noise for c in with_noise} == set(A.NOISE_KINDS)
    assert AugmentSpec(p_noise=0, p_reverb=0, p_gain=0).draw(rng).describe() == "none"
    with pytest.raises(ValueError, match="p_noise must be a probability"):
        AugmentSpec(p_noise=1.5)
    with pytest.raises(ValueError, match="noise_kinds"):
        AugmentSpec(noise_kinds=("brown",))
    with pytest.raises(ValueError, match="range is reversed"):
        AugmentSpec(snr_db=(30, 10))


def test_long_findings_are_read_faster_to_fit_one_whisper_window(tmp_path):
    from train.synth.speechrate import fit_rate

    long_text = (
        "The heart is normal in size. No pericardial effusion. No pleural effusion. There is no consolidation. "
        "A 12 mm nodule is seen in the right upper lobe. Mild emphysema in both upper lobes. The trachea and "
        "both main bronchi are open. No enlarged lymph nodes are seen. No fibrotic changes. The liver and "
        "spleen appear normal. No hiatal hernia."
    )  # 59 words, as H6's reports: many short sentences, each ending in a pause
    assert fit_rate("Mild emphysema.", 142, 29.0) == 142  # short reports keep the drawn rate
    assert fit_rate(long_text, 142, None) == 142
    assert fit_rate(long_text, 142, 29.0) > 150
    assert fit_rate(long_text * 3, 142, 29.0) == 190  # never beyond the natural range
    reports = {"train": [], "valid": [(f"valid_{i}_a_1.nii.gz", long_text) for i in range(1, 7)]}
    write_reports(tmp_path / "ct", reports)
    summary = synthesize_speech_rate(
        tmp_path / "ct", tmp_path / "sr", seed=0, splits=("valid",), progress=False
    )
    assert summary.over_window == 0 and 22.0 < summary.longest_s <= 30.0
    kept = synthesize_speech_rate(
        tmp_path / "ct", tmp_path / "slow", seed=0, splits=("valid",), fit_window_s=None, progress=False
    )
    assert kept.longest_s > summary.longest_s
