"""A tiny, learnable CT-RATE + Speech-RATE tree and tiny models for the training tests.

Volumes are 16×32×32 NIfTI files already on the smoke spec's grid (20 × 11.2 × 11.2 mm), so
preparing them costs nothing; each study has one of two findings (a bright blob = "Lung nodule",
dark lungs = "Emphysema"), said in its Findings text, and a 0.6 s "dictation" whose tone
frequency tells the two apart. Small enough that a few steps of every stage run in seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import soundfile as sf
import torch

from engine.labels import LABELS
from engine.models.speech import SpeechStudent, SpeechStudentConfig

SMOKE_CONFIG = Path(__file__).resolve().parents[2] / "train" / "configs" / "smoke.json"
SHAPE_ZYX = (16, 32, 32)
SPACING_ZYX = (20.0, 11.2, 11.2)


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _volume(kind: int, rng: np.random.Generator) -> np.ndarray:
    """HU (z, y, x): body at 40 HU, lungs at -850 (-980 when emphysema), a nodule blob (kind 0)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE_ZYX), indexing="ij")
    hu = np.full(SHAPE_ZYX, -1000.0)
    hu[(y**2 + x**2) < 0.8] = 40.0
    lungs = ((y**2 + (np.abs(x) - 0.4) ** 2) < 0.12)
    hu[lungs] = -980.0 if kind == 1 else -850.0
    if kind == 0:
        c = rng.uniform(-0.4, 0.4, 3)
        hu[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 0.05] = 60.0
    return hu + rng.normal(0, 15, SHAPE_ZYX)


def make_tiny_data(root: Path, n_train: int = 16, n_valid: int = 8, seed: int = 0) -> Path:
    """Write ``root/ct-rate`` and ``root/speech-rate`` (v1 layout with metadata, mentions, manifest)."""
    rng = np.random.default_rng(seed)
    ds = root / "ct-rate" / "dataset"
    sds = root / "speech-rate" / "dataset"
    csvs = {"train": ("train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv",
                      "train_mentions_chexpert.csv"),
            "valid": ("validation_reports.csv", "valid_predicted_labels.csv", "validation_metadata.csv",
                      "valid_mentions_chexpert.csv")}
    nodule, emph = LABELS.index("Lung nodule"), LABELS.index("Emphysema")
    for split, n in (("train", n_train), ("valid", n_valid)):
        reports, labels, meta, mentions, manifest = [], [], [], [], []
        for i in range(n):
            kind = i % 2
            name = f"{split}_{i + 1}_a_1.nii.gz"
            hu = _volume(kind, rng)
            # nibabel (i, j, k) = (x, y, z) in LPS -> RAS affine with the true spacing
            arr = hu.transpose(2, 1, 0).astype(np.int16)
            affine = np.diag([-SPACING_ZYX[2], -SPACING_ZYX[1], SPACING_ZYX[0], 1.0])
            path = ds / split / f"{split}_{i + 1}" / f"{split}_{i + 1}_a" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, affine), path)
            text = ("A solid lung nodule is seen. No emphysema." if kind == 0
                    else "Centrilobular emphysema is present. No lung nodule.")
            reports.append([name, "Cough.", "Chest CT.", text, "See findings."])
            lab = [0] * len(LABELS)
            men = [""] * len(LABELS)  # CheXpert coding (train.mentions): empty = not mentioned
            lab[nodule if kind == 0 else emph] = 1
            men[nodule], men[emph] = (1, 0) if kind == 0 else (0, 1)
            labels.append([name, *lab])
            mentions.append([name, *men])
            meta.append([name, 1, 0, f"[{SPACING_ZYX[2]}, {SPACING_ZYX[1]}]", SPACING_ZYX[0]])
            t = np.arange(int(0.6 * 16000)) / 16000
            tone = 0.3 * np.sin(2 * np.pi * (300 if kind == 0 else 900) * t) + 0.01 * rng.standard_normal(t.size)
            wav = sds / split / f"{split}_{i + 1}" / f"{split}_{i + 1}_a" / f"{split}_{i + 1}_a_1_findings.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, tone.astype(np.float32), 16000, subtype="PCM_16")
            manifest.append([name, str(wav.relative_to(sds.parent)), "tone", "test", 150, 50, "none", 0.6, split,
                             "x", text])
        r, lab_csv, meta_csv, men_csv = csvs[split]
        _write_csv(ds / "radiology_text_reports" / r,
                   ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"], reports)
        _write_csv(ds / "multi_abnormality_labels" / lab_csv, ["VolumeName", *LABELS], labels)
        _write_csv(ds / "multi_abnormality_labels" / men_csv, ["VolumeName", *LABELS], mentions)
        _write_csv(ds / "metadata" / meta_csv,
                   ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"], meta)
        _write_csv(sds / f"{split}_manifest.csv",
                   ["volume", "path", "voice", "engine", "rate", "pitch", "augmentation", "duration", "split",
                    "gender", "text"], manifest)
    return root


def tiny_student(seed: int = 0, trainable_layers: int = 1, latent_dim: int = 64) -> SpeechStudent:
    """A 2-layer, d=64 random Whisper encoder wrapped as a student (no real backbone needed)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    wc = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                       num_mel_bins=80, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2)
    encoder = WhisperEncoder(wc).eval()
    cfg = SpeechStudentConfig(backbone="whisper-tiny-test", trainable_layers=trainable_layers, latent_dim=latent_dim)
    return SpeechStudent(cfg, encoder)


class ToyRecipe:
    """A recipe with the teacher's loss structure on fixed random data, for loop-level tests.

    CT side: the smoke CTEncoder on random 16×32×32 volumes (or a linear map when ``ct=False``);
    text side: a linear projection of random features with dropout (so RNG state matters);
    symmetric InfoNCE over embeddings gathered across ranks, exactly as ``TeacherRecipe.loss``.
    """

    def __init__(self, n: int = 16, seed: int = 0, ct: bool = True, dropout: float = 0.1):
        import json

        from engine.models.ct import CTEncoder
        from engine.models.ct_config import CTEncoderConfig
        from engine.models.space import LogitScale

        gen = torch.Generator().manual_seed(1234)
        self.x_ct = torch.randn(n, 1, *SHAPE_ZYX, generator=gen) if ct else torch.randn(n, 20, generator=gen)
        self.x_txt = torch.randn(n, 24, generator=gen)
        torch.manual_seed(seed)
        cfg = json.loads(SMOKE_CONFIG.read_text())
        enc = CTEncoder(CTEncoderConfig.from_dict(cfg["ct_encoder"])) if ct else torch.nn.Linear(20, 64)
        self.module = torch.nn.ModuleDict({
            "ct": enc,
            "text": torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(24, 64, bias=False)),
            "scale": LogitScale(),
        })

    @property
    def n_train(self) -> int:
        return self.x_txt.shape[0]

    def head_parameters(self) -> set[int]:
        return {id(p) for p in self.module["text"].parameters()}

    def loss(self, rows, offset, env):
        from engine.models.space import info_nce
        from train.distributed import gather_with_grad

        a = self.module["ct"](self.x_ct[rows])
        b = self.module["text"](self.x_txt[rows])
        loss = info_nce(a, b, self.module["scale"], all_a=gather_with_grad(a, env), all_b=gather_with_grad(b, env),
                        offset=offset)
        return loss, {}

    def validate(self, env):
        return {}

    def extra_state(self):
        return {}
