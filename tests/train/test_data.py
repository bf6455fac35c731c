"""CT-RATE and Speech-RATE readers on small trees built here (real CT-RATE's layout and CSV names)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from engine.errors import AudioError, DataError, SpeechCTWarning
from engine.io.nifti import read_nifti
from engine.labels import LABELS
from train.data import (
    CTRateDataset,
    CTRateIndex,
    SpeechRateDataset,
    SpeechRateIndex,
    parse_metadata_row,
    parse_volume_name,
    speech_rate_wav_path,
)

SHAPE_IJK = (6, 5, 4)  # nibabel (i, j, k); Volume arrays are (k, j, i) = (4, 5, 6)
TRAIN = ("train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz")
VALID = ("valid_1_a_1.nii.gz",)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def edit_csv(path: Path, fn) -> None:
    """Rewrite a CSV through ``fn(header, rows) -> (header, rows)``."""
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    header, rows = fn(table[0], table[1:])
    write_csv(path, header, rows)


def label_row(i: int) -> list[int]:
    return [(i + k) % 2 for k in range(len(LABELS))]


MENTION_CODES = ("1", "-1", "0", "")  # CheXpert coding: present, uncertain, absent, not mentioned


def mention_row(i: int) -> list[str]:
    return [MENTION_CODES[(i + k) % 4] for k in range(len(LABELS))]


def mention_classes(i: int) -> list[int]:
    """``mention_row(i)`` as the reader returns it: class indices (0 present ... 3 not mentioned)."""
    return [(i + k) % 4 for k in range(len(LABELS))]


def make_ctrate(root: Path, *, mentions: bool = True) -> Path:
    """Two splits: v1 train volumes stored as HU + 1024 with an untrusted header (unit spacing,
    no rescale), whose metadata says slope 1, intercept -1024, XYSpacing [0.7, 0.8], ZSpacing 2.5;
    and a v2 ``valid_fixed`` volume that already holds HU (its metadata intercept must be ignored)."""
    ds = root / "dataset"
    for split, names in (("train", TRAIN), ("valid", VALID)):
        folder = "valid_fixed" if split == "valid" else split
        for n, name in enumerate(names):
            v = parse_volume_name(name)
            hu = (np.arange(np.prod(SHAPE_IJK)).reshape(SHAPE_IJK) - 1000 + 100 * n).astype(np.int16)
            stored = hu if split == "valid" else (hu + 1024).astype(np.int16)
            img = nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 1.0, 1.0]))
            path = ds / folder / v.patient / v.scan / v.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(img, path)
    reports = {"train": "train_reports.csv", "valid": "validation_reports.csv"}
    labels = {"train": "train_predicted_labels.csv", "valid": "valid_predicted_labels.csv"}
    metadata = {"train": "train_metadata.csv", "valid": "validation_metadata.csv"}
    for split, names in (("train", TRAIN), ("valid", VALID)):
        write_csv(
            ds / "radiology_text_reports" / reports[split],
            ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
            [[n, "Dyspnea.", "Chest CT.", f"Findings of {n}.", "Impression."] for n in names],
        )
        write_csv(
            ds / "multi_abnormality_labels" / labels[split],
            ["VolumeName", *LABELS],
            [[n, *label_row(i)] for i, n in enumerate(names)],
        )
        if mentions:
            write_csv(
                ds / "multi_abnormality_labels" / f"{split}_mentions_chexpert.csv",
                ["VolumeName", *LABELS],
                [[n, *mention_row(i)] for i, n in enumerate(names)],
            )
        write_csv(
            ds / "metadata" / metadata[split],
            ["VolumeName", "Manufacturer", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
            [[n, "ACME", 1, -1024, "[0.7, 0.8]", 2.5] for n in names],
        )
    return root


def make_speechrate(root: Path, names=TRAIN + VALID, *, manifest: bool = True) -> Path:
    rows = []
    for i, name in enumerate(names):
        path = speech_rate_wav_path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(8000 + 1600 * i) / 16000
        sf.write(str(path), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, subtype="PCM_16")
        split = parse_volume_name(name).split
        rows.append(
            [
                split,
                name,
                path.relative_to(root).as_posix(),
                "us-f2",
                "espeak",
                160,
                50,
                "none",
                t.size / 16000,
            ]
        )
    if manifest:
        for split in ("train", "valid"):
            write_csv(
                root / "dataset" / f"{split}_manifest.csv",
                ["volume", "path", "voice", "engine", "rate", "pitch", "augmentation", "duration", "text"],
                [[*r[1:], f"Findings of {r[1]}."] for r in rows if r[0] == split],
            )
    return root


@pytest.fixture
def ctrate(tmp_path) -> Path:
    return make_ctrate(tmp_path / "ct-rate")


@pytest.fixture
def speech(tmp_path) -> Path:
    return make_speechrate(tmp_path / "speech-rate")


def test_volume_names_and_paths():
    v = parse_volume_name("train_1002_a_1.nii.gz")
    assert (v.split, v.patient, v.scan, v.stem) == ("train", "train_1002", "train_1002_a", "train_1002_a_1")
    assert parse_volume_name("valid_7_b_2").file_name == "valid_7_b_2.nii.gz"
    assert speech_rate_wav_path("/x", "train_1002_a_1.nii.gz") == Path(
        "/x/dataset/train/train_1002/train_1002_a/train_1002_a_1_findings.wav"
    )
    with pytest.raises(DataError, match="is not <split>_<patient>_<scan>_<recon>.nii.gz"):
        parse_volume_name("scan01.nii.gz")


def test_metadata_row_parsing():
    meta = parse_metadata_row(
        {
            "VolumeName": "v",
            "RescaleSlope": "1.0",
            "RescaleIntercept": "-1024",
            "XYSpacing": "[0.585938, 0.6]",
            "ZSpacing": "1.5",
        },
        Path("m.csv"),
    )
    assert (meta.slope, meta.intercept) == (1.0, -1024.0)
    assert meta.spacing == (1.5, 0.6, 0.585938)  # (sz, sy, sx) from "[x, y]"


def test_index_joins_reports_labels_mentions_metadata(ctrate):
    index = CTRateIndex(ctrate, "train")
    assert [r.volume_name for r in index] == list(TRAIN)
    assert index.has_mentions
    r = index[1]
    assert r.path == ctrate / "dataset/train/train_1/train_1_a/train_1_a_2.nii.gz"
    assert not r.fixed
    assert r.findings == "Findings of train_1_a_2.nii.gz."
    assert r.labels.dtype == np.int8 and r.labels.tolist() == label_row(1)
    assert r.mentions.tolist() == mention_classes(1)
    assert (r.meta.slope, r.meta.intercept, r.meta.spacing) == (1.0, -1024.0, (2.5, 0.8, 0.7))
    assert index.labels_matrix().shape == (3, 18)
    assert index.index_of("train_2_b_1.nii.gz") == 2
    # the dataset/ folder itself is accepted as the root too
    assert len(CTRateIndex(ctrate / "dataset", "train")) == 3


def test_real_ctrate_without_mentions_says_present_or_not_mentioned(ctrate):
    for split in ("train", "valid"):
        (ctrate / f"dataset/multi_abnormality_labels/{split}_mentions_chexpert.csv").unlink()
    index = CTRateIndex(ctrate, "train")
    assert not index.has_mentions
    assert all(np.array_equal(r.mentions, np.where(r.labels > 0, 0, 3)) for r in index)


def test_three_state_mentions_file_is_refused(ctrate):
    """The old file coded -1 as 'not mentioned'; read as CheXpert's coding it would turn into 'uncertain'."""
    ds = ctrate / "dataset/multi_abnormality_labels"
    (ds / "train_mentions_chexpert.csv").rename(ds / "train_mentions.csv")
    with pytest.raises(DataError, match="three-state mentions file .* is no longer read"):
        CTRateIndex(ctrate, "train")


def test_v1_volumes_get_metadata_overrides_and_v2_fixed_are_read_as_stored(ctrate):
    train = CTRateDataset(ctrate, "train")  # engine.io.load_volume
    item = train[0]
    assert item.volume.shape == (4, 5, 6)
    assert item.volume.spacing == (2.5, 0.8, 0.7)  # metadata wins over the header's 1 mm
    expected_hu = np.arange(np.prod(SHAPE_IJK)).reshape(SHAPE_IJK).transpose(2, 1, 0) - 1000
    np.testing.assert_array_equal(item.volume.array, expected_hu)
    assert item.labels.dtype == np.float32 and item.audio is None
    valid = CTRateDataset(ctrate, "valid")
    assert valid.index[0].fixed
    v = valid[0].volume
    np.testing.assert_array_equal(v.array, expected_hu)  # not shifted by the metadata's -1024 again
    assert v.spacing == (1.0, 1.0, 1.0)


def test_loading_is_lazy_and_passes_overrides_to_the_loader(ctrate):
    calls = []

    def loader(path, **overrides):
        calls.append((Path(path).name, overrides))
        return "volume"

    ds = CTRateDataset(ctrate, "train", loader=loader, transform=lambda vol: f"prepared {vol}")
    assert calls == [] and len(ds) == 3
    assert ds[2].volume == "prepared volume"
    assert calls == [("train_2_b_1.nii.gz", {"slope": 1.0, "intercept": -1024.0, "spacing": (2.5, 0.8, 0.7)})]
    CTRateDataset(ctrate, "valid", loader=loader)[0]
    assert calls[-1] == ("valid_1_a_1.nii.gz", {})


def test_ctrate_with_speech_audio(ctrate, speech):
    ds = CTRateDataset(ctrate, "train", speech_root=speech, loader=read_nifti)
    item = ds[1]
    assert item.record.audio_path == speech_rate_wav_path(speech, "train_1_a_2.nii.gz")
    assert item.audio.dtype == np.float32 and item.audio.size == 8000 + 1600
    assert (
        CTRateDataset(ctrate, "train", speech_root=speech, load_audio=False, loader=read_nifti)[1].audio
        is None
    )


def test_speechrate_from_manifest(speech):
    ds = SpeechRateDataset(speech, "train", transform=lambda a: a[:100])
    assert len(ds) == 3
    item = ds[2]
    assert item.volume_name == "train_2_b_1.nii.gz" and item.sample_rate == 16000
    assert item.audio.shape == (100,) and item.duration_s == pytest.approx((8000 + 3200) / 16000)
    rec = item.record
    assert (rec.voice, rec.engine, rec.rate_wpm, rec.pitch, rec.augmentation) == (
        "us-f2",
        "espeak",
        160,
        50,
        "none",
    )
    assert rec.text == "Findings of train_2_b_1.nii.gz."


def test_speechrate_by_walking_real_recordings(tmp_path):
    root = make_speechrate(tmp_path, manifest=False)
    # a real dictation: 44.1 kHz stereo is down-mixed and resampled on reading
    path = speech_rate_wav_path(root, "train_2_b_1.nii.gz")
    sf.write(str(path), np.zeros((44100, 2), np.float32) + 0.1, 44100)
    index = SpeechRateIndex(root, "train")
    assert [r.volume_name for r in index] == sorted(TRAIN)
    assert index.get("train_1_a_1.nii.gz").voice is None
    audio = SpeechRateDataset(root, "train")[2].audio
    assert audio.dtype == np.float32 and audio.size == 16000
    assert np.abs(audio[1000:-1000] - 0.1).max() < 1e-3


def test_speechrate_written_by_the_synthesiser_reads_back(tmp_path):
    from tests.train.test_speechrate import write_reports
    from train.synth.speechrate import synthesize_speech_rate

    reports = {
        "train": [("train_5_a_1.nii.gz", "No pleural effusion.")],
        "valid": [("valid_5_a_1.nii.gz", "Mild emphysema.")],
    }
    write_reports(tmp_path / "ct", reports)
    synthesize_speech_rate(tmp_path / "ct", tmp_path / "sr", seed=0, progress=False)
    item = SpeechRateDataset(tmp_path / "sr", "valid")[0]
    assert item.volume_name == "valid_5_a_1.nii.gz" and item.record.text == "Mild emphysema."
    assert item.duration_s == pytest.approx(item.record.duration_s, abs=1e-3)


# --------------------------------------------------------------------------- errors


def _drop_row(name):
    return lambda header, rows: (header, [r for r in rows if r[0] != name])


def _set_cell(name, column, value):
    def fn(header, rows):
        col = header.index(column)
        for r in rows:
            if r[0] == name:
                r[col] = value
        return header, rows

    return fn


LAB = "dataset/multi_abnormality_labels/train_predicted_labels.csv"
MEN = "dataset/multi_abnormality_labels/train_mentions_chexpert.csv"
REP = "dataset/radiology_text_reports/train_reports.csv"
META = "dataset/metadata/train_metadata.csv"

CT_ERRORS = [
    (
        "volume file missing",
        lambda root: (root / "dataset/train/train_1/train_1_a/train_1_a_2.nii.gz").unlink(),
        "volume listed in the reports CSV but its file is missing: train_1_a_2.nii.gz",
    ),
    (
        "duplicate VolumeName",
        lambda root: edit_csv(root / REP, lambda h, rows: (h, rows + [rows[0]])),
        "reports lists VolumeName 'train_1_a_1.nii.gz' twice",
    ),
    ("reports missing", lambda root: (root / REP).unlink(), "reports file is missing"),
    (
        "reports without Findings_EN",
        lambda root: edit_csv(root / REP, lambda h, rows: (["VolumeName", "A", "B", "Findings", "C"], rows)),
        "reports lacks column.s. Findings_EN",
    ),
    (
        "bad VolumeName",
        lambda root: edit_csv(root / REP, lambda h, rows: (h, rows + [["chest01.nii.gz", "", "", "x", ""]])),
        "VolumeName 'chest01.nii.gz' is not",
    ),
    ("labels missing", lambda root: (root / LAB).unlink(), "labels file is missing"),
    (
        "label column missing",
        lambda root: edit_csv(
            root / LAB, lambda h, rows: ([c for c in h if c != "Cardiomegaly"], [r[:3] + r[4:] for r in rows])
        ),
        r"label columns are wrong: missing \['Cardiomegaly'\]",
    ),
    (
        "label column misspelt",
        lambda root: edit_csv(
            root / LAB, lambda h, rows: ([c.replace("Emphysema", "Emphysem") for c in h], rows)
        ),
        r"missing \['Emphysema'\]; unknown \['Emphysem'\]",
    ),
    (
        "label value 2",
        lambda root: edit_csv(root / LAB, _set_cell("train_1_a_1.nii.gz", "Atelectasis", "2")),
        r"value\(s\) \[2\]",
    ),
    (
        "label value text",
        lambda root: edit_csv(root / LAB, _set_cell("train_1_a_1.nii.gz", "Atelectasis", "yes")),
        "non-numeric",
    ),
    (
        "volume without labels",
        lambda root: edit_csv(root / LAB, _drop_row("train_2_b_1.nii.gz")),
        "no row in the labels CSV: train_2_b_1",
    ),
    (
        "labels for an unreported volume",
        lambda root: edit_csv(
            root / LAB, lambda h, rows: (h, rows + [["train_9_a_1.nii.gz", *label_row(0)]])
        ),
        "labelled but absent from the reports CSV: train_9_a_1.nii.gz",
    ),
    (
        "mention value 5",
        lambda root: edit_csv(root / MEN, _set_cell("train_1_a_2.nii.gz", "Cardiomegaly", "5")),
        r"Cardiomegaly has code '5'; allowed 1, -1, 0 or empty",
    ),
    (
        "volume without mentions",
        lambda root: edit_csv(root / MEN, _drop_row("train_1_a_1.nii.gz")),
        "no row in the mentions CSV",
    ),
    (
        "volume without metadata",
        lambda root: edit_csv(root / META, _drop_row("train_1_a_1.nii.gz")),
        "has no metadata row",
    ),
    ("metadata file missing", lambda root: (root / META).unlink(), "has no metadata row"),
    (
        "bad XYSpacing",
        lambda root: edit_csv(root / META, _set_cell("train_1_a_1.nii.gz", "XYSpacing", "0.7")),
        "XYSpacing '0.7' is not",
    ),
    (
        "metadata without ZSpacing",
        lambda root: edit_csv(root / META, lambda h, rows: ([c.replace("ZSpacing", "Z") for c in h], rows)),
        "metadata lacks column.s. ZSpacing",
    ),
    (
        "volume folder missing",
        lambda root: shutil.rmtree(root / "dataset/train"),
        r"volume folder train/ \(or train_fixed/\) is missing",
    ),
    ("not a dataset root", lambda root: shutil.rmtree(root / "dataset"), "no dataset/ folder here"),
]


@pytest.mark.parametrize(("case", "breaks", "message"), CT_ERRORS, ids=[c[0] for c in CT_ERRORS])
def test_ctrate_errors_name_the_problem(ctrate, case, breaks, message):
    breaks(ctrate)
    with pytest.raises(DataError, match=message):
        CTRateIndex(ctrate, "train")


def test_unknown_split(ctrate):
    with pytest.raises(DataError, match="unknown split 'test'"):
        CTRateIndex(ctrate, "test")


def test_missing_skip_drops_with_one_warning(ctrate):
    (ctrate / "dataset/train/train_1/train_1_a/train_1_a_2.nii.gz").unlink()
    with pytest.warns(SpeechCTWarning, match="skipping 1 volume"):
        index = CTRateIndex(ctrate, "train", missing="skip")
    assert [r.volume_name for r in index] == ["train_1_a_1.nii.gz", "train_2_b_1.nii.gz"]
    with pytest.raises(DataError, match="is not in split 'train'"):
        index.index_of("train_1_a_2.nii.gz")


def test_speech_errors_name_the_problem(ctrate, speech, tmp_path):
    speech_rate_wav_path(speech, "train_1_a_1.nii.gz").unlink()
    with pytest.raises(DataError, match="WAV listed in the manifest is missing: train_1_a_1.nii.gz"):
        SpeechRateIndex(speech, "train")
    edit_csv(speech / "dataset/train_manifest.csv", _drop_row("train_1_a_1.nii.gz"))
    with pytest.raises(DataError, match="volume has no spoken report: train_1_a_1.nii.gz"):
        CTRateIndex(ctrate, "train", speech_root=speech)
    edit_csv(speech / "dataset/train_manifest.csv", lambda h, rows: (h, rows + [rows[0]]))
    with pytest.raises(DataError, match="Speech-RATE manifest lists volume 'train_1_a_2.nii.gz' twice"):
        SpeechRateIndex(speech, "train")
    edit_csv(speech / "dataset/train_manifest.csv", lambda h, rows: (["vol", *h[1:]], rows))
    with pytest.raises(DataError, match="Speech-RATE manifest lacks column.s. volume"):
        SpeechRateIndex(speech, "train")

    walked = make_speechrate(tmp_path / "walked", manifest=False)
    wav = speech_rate_wav_path(walked, "train_1_a_1.nii.gz")
    (wav.parent.parent / "train_1_b").mkdir()
    wav.rename(wav.parent.parent / "train_1_b" / wav.name)
    with pytest.raises(DataError, match=r"WAV sits in the wrong folder \(expected train_1/train_1_a/\)"):
        SpeechRateIndex(walked, "train")
    shutil.rmtree(walked / "dataset/train")
    with pytest.raises(DataError, match="Speech-RATE split folder is missing"):
        SpeechRateIndex(walked, "train")
    (walked / "dataset/train").mkdir()
    with pytest.raises(DataError, match=r"no \*_findings.wav files"):
        SpeechRateIndex(walked, "train")
    bad = walked / "dataset/train/train_1/train_1_a/train_1_a_1_findings.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a wav")
    with pytest.raises(AudioError, match="cannot decode audio"):
        SpeechRateDataset(walked, "train")[0]


# --------------------------------------------------------------------------- on H6's generator


def _generated_tree(root: Path, version: int) -> Path:
    from train.synth.ctrate import write_ctrate

    write_ctrate(root, 1, 1, seed=0, size="small", version=version, progress=False)
    return root


@pytest.mark.parametrize("version", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_reads_the_synthetic_ctrate_generator_and_its_speech(tmp_path, version):
    """train.synth.ctrate's tree → CTRateDataset (v1 overrides / v2 as stored) → Speech-RATE joined."""
    from train.synth.speechrate import synthesize_speech_rate

    ct = _generated_tree(tmp_path / "ct-rate", version)
    sr = tmp_path / "speech-rate"
    synthesize_speech_rate(ct, sr, seed=0, progress=False)
    for split in ("train", "valid"):
        ds = CTRateDataset(ct, split, speech_root=sr)
        assert ds.index.has_mentions and len(ds) >= 1
        item = ds[0]
        assert ds.index[0].fixed == (version == 2)
        lo, hi = item.volume.hu_range()
        assert -1100 <= lo <= -900 and 0 < hi < 3100  # air outside the body: HU, rescaled exactly once
        assert item.volume.spacing == pytest.approx(ds.index[0].meta.spacing, rel=1e-6)
        assert set(item.mentions.tolist()) <= {0, 1, 2, 3}
        # every finding reported present is labelled present
        assert np.all(item.labels[item.mentions == 0] == 1)
        assert item.audio is not None and item.audio.size > 16000
        spoken = SpeechRateIndex(sr, split).get(item.volume_name)
        dictations = {r["VolumeName"]: r["Dictation_EN"] for r in csv.DictReader(
            open(ct / f"dataset/radiology_text_reports/{split}_dictations.csv", newline=""))}
        assert spoken.text == dictations[item.volume_name]  # what a radiologist says, read aloud
