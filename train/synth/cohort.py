"""Which findings each synthetic patient has: CT-RATE-like frequencies and co-occurrence.

Each patient gets an age, a sex and a smoking flag; findings are then drawn one after the
other from logistic models whose terms say what travels together in chest CT reports:
age drives calcifications, emphysema, fibrotic sequelae and hernias; coronary calcification
follows aortic calcification; effusion, atelectasis and consolidation come together;
septal thickening goes with effusion and cardiomegaly (oedema); bronchiectasis with
peribronchial thickening and mosaic attenuation. The intercepts are calibrated once
(deterministically, by simulation) so the marginal frequencies match ``TARGET_PREVALENCE``,
approximately CT-RATE's training-set label frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.labels import LABELS

#: Approximate share of CT-RATE training volumes with each label (CT-RATE paper, rounded).
TARGET_PREVALENCE = {
    "Medical material": 0.11,
    "Arterial wall calcification": 0.40,
    "Cardiomegaly": 0.11,
    "Pericardial effusion": 0.07,
    "Coronary artery wall calcification": 0.30,
    "Hiatal hernia": 0.14,
    "Lymphadenopathy": 0.26,
    "Emphysema": 0.20,
    "Atelectasis": 0.26,
    "Lung nodule": 0.45,
    "Lung opacity": 0.40,
    "Pulmonary fibrotic sequela": 0.27,
    "Pleural effusion": 0.12,
    "Mosaic attenuation pattern": 0.08,
    "Peribronchial thickening": 0.11,
    "Consolidation": 0.17,
    "Bronchiectasis": 0.10,
    "Interlobular septal thickening": 0.08,
}

#: Sampling order and log-odds terms: (age per decade above 60, smoker, {earlier label: weight}).
_MODEL = (
    ("Arterial wall calcification", 1.1, 0.5, {}),
    ("Coronary artery wall calcification", 0.7, 0.4, {"Arterial wall calcification": 2.4}),
    ("Emphysema", 0.35, 1.8, {}),
    ("Cardiomegaly", 0.5, 0.0, {"Coronary artery wall calcification": 0.6}),
    ("Pericardial effusion", 0.2, 0.0, {"Cardiomegaly": 1.2}),
    ("Medical material", 0.5, 0.0, {"Cardiomegaly": 1.0, "Coronary artery wall calcification": 0.6}),
    ("Hiatal hernia", 0.6, 0.0, {}),
    ("Lung nodule", 0.25, 0.4, {"Emphysema": 0.4}),
    ("Pulmonary fibrotic sequela", 0.5, 0.3, {"Emphysema": 0.5}),
    ("Lung opacity", 0.1, 0.0, {"Pulmonary fibrotic sequela": 0.4}),
    ("Consolidation", 0.1, 0.0, {"Lung opacity": 1.4}),
    ("Pleural effusion", 0.3, 0.0, {"Cardiomegaly": 1.1, "Consolidation": 1.3, "Pericardial effusion": 1.0}),
    ("Atelectasis", 0.2, 0.0, {"Pleural effusion": 2.2, "Consolidation": 0.8}),
    ("Lymphadenopathy", 0.2, 0.0, {"Consolidation": 0.5, "Lung nodule": 0.4}),
    ("Interlobular septal thickening", 0.1, 0.0, {"Pleural effusion": 1.4, "Cardiomegaly": 0.9,
                                                  "Lung opacity": 1.0}),
    ("Peribronchial thickening", 0.0, 0.6, {"Emphysema": 0.4}),
    ("Bronchiectasis", 0.3, 0.0, {"Peribronchial thickening": 1.6, "Pulmonary fibrotic sequela": 0.8}),
    ("Mosaic attenuation pattern", 0.0, 0.0, {"Bronchiectasis": 1.3, "Peribronchial thickening": 1.0}),
)
assert sorted(m[0] for m in _MODEL) == sorted(LABELS)


@dataclass
class Patient:
    age: int
    sex: str  # "M" | "F"
    smoker: bool
    labels: dict[str, int]  # all 18 labels in LABELS order, 0/1

    @property
    def present(self) -> list[str]:
        return [lab for lab in LABELS if self.labels[lab]]


def _demographics(rng: np.random.Generator, n: int):
    age = np.clip(rng.normal(58, 14, n), 19, 95).round().astype(int)
    sex = np.where(rng.random(n) < 0.56, "M", "F")
    smoker = rng.random(n) < np.where(sex == "M", 0.42, 0.25)
    return age, sex, smoker


def _draw(rng: np.random.Generator, age, smoker, bias: dict[str, float]) -> dict[str, np.ndarray]:
    decades = (age - 60) / 10.0
    out: dict[str, np.ndarray] = {}
    for lab, w_age, w_smoke, deps in _MODEL:
        logit = bias[lab] + w_age * decades + w_smoke * smoker
        for dep, w in deps.items():
            logit = logit + w * out[dep]
        out[lab] = (rng.random(len(age)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    return out


@lru_cache(maxsize=1)
def calibrated_bias() -> dict[str, float]:
    """Intercepts that give ``TARGET_PREVALENCE`` marginals (fixed seed, so always the same)."""
    bias = {lab: float(np.log(p / (1 - p))) for lab, p in TARGET_PREVALENCE.items()}
    rng = np.random.default_rng(20251002)
    age, _, smoker = _demographics(rng, 40000)
    for _ in range(12):
        draws = _draw(np.random.default_rng(7), age, smoker, bias)
        for lab, p in TARGET_PREVALENCE.items():
            got = float(np.clip(draws[lab].mean(), 1e-3, 1 - 1e-3))
            bias[lab] += np.log(p / (1 - p)) - np.log(got / (1 - got))
    return {k: round(v, 4) for k, v in bias.items()}


def sample_cohort(n: int, seed: int) -> list[Patient]:
    """``n`` patients with CT-RATE-like finding frequencies; deterministic for ``seed``."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 77])
    age, sex, smoker = _demographics(rng, n)
    draws = _draw(rng, age, smoker, calibrated_bias())
    return [Patient(int(age[i]), str(sex[i]), bool(smoker[i]), {lab: int(draws[lab][i]) for lab in LABELS})
            for i in range(n)]


def prevalence(patients: list[Patient]) -> dict[str, float]:
    return {lab: float(np.mean([p.labels[lab] for p in patients])) if patients else 0.0 for lab in LABELS}
