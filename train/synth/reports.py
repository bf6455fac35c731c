"""Radiology reports that agree with a phantom's findings, and what each report says.

``write_report(findings, phrase_set=...)`` turns the instance details of
:func:`train.synth.phantom.make_phantom` (side, lobe, size in mm, severity, kind) into
CT-RATE-style ``ClinicalInformation_EN``, ``Technique_EN``, ``Findings_EN`` and
``Impressions_EN`` plus a *mentions* record per finding:

* ``1`` the report says the finding is present (plainly or hedged: "likely", "probable",
  "cannot be excluded"). Hedged sentences are only written for findings that really are in
  the image (mild ones), so hedged = present, for labels and mentions alike;
* ``0`` the report negates it ("No pleural effusion.");
* ``-1`` the report does not speak of it. Not every absent finding is negated.

Every present finding is reported, so label 1 ⇒ mention 1; label 0 ⇒ mention 0 or −1.

Findings are kept short enough to be read aloud within one 30 s Whisper window
(``max_words`` = 70 by default, ≈ 25 s at 165 words/min): present findings first take their
full sentence, fall back to a compact one when the budget is tight, and negations and normal
statements fill what is left. ``long=True`` lifts the budget to 160 words (still far below
BERT's 512 tokens). Phrase set ``"A"`` is for train, ``"B"`` for valid (see
:mod:`train.synth.phrases`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from engine.findings import LABELS
from train.synth.phrases import CLINICAL, COMBINED_NEG, NO_ACUTE, NORMALS, PHRASES, TECHNIQUE

#: Anatomical reading order of a chest CT report.
REPORT_ORDER = (
    "Medical material", "Cardiomegaly", "Pericardial effusion", "Arterial wall calcification",
    "Coronary artery wall calcification", "Lymphadenopathy", "Hiatal hernia", "Peribronchial thickening",
    "Bronchiectasis", "Emphysema", "Lung nodule", "Consolidation", "Lung opacity", "Atelectasis",
    "Pulmonary fibrotic sequela", "Mosaic attenuation pattern", "Interlobular septal thickening", "Pleural effusion",
)
#: How often an absent finding is explicitly negated (radiologists negate what matters).
NEGATION_RATE = {
    "Pleural effusion": 0.7, "Pericardial effusion": 0.6, "Lymphadenopathy": 0.6, "Lung nodule": 0.45,
    "Consolidation": 0.4, "Cardiomegaly": 0.35, "Emphysema": 0.25, "Atelectasis": 0.2, "Lung opacity": 0.25,
    "Hiatal hernia": 0.15, "Bronchiectasis": 0.15, "Arterial wall calcification": 0.2,
    "Coronary artery wall calcification": 0.2, "Pulmonary fibrotic sequela": 0.15, "Peribronchial thickening": 0.1,
    "Mosaic attenuation pattern": 0.08, "Interlobular septal thickening": 0.1, "Medical material": 0.0,
}
SPLIT_PHRASE_SET = {"train": "A", "valid": "B"}

_AMOUNT = {"mild": "small", "moderate": "moderate", "severe": "large", None: "small"}
_LOC = {"diffuse": "lungs bilaterally", "diffuse, subpleural": "lungs bilaterally", "lower zones": "lower lung zones"}
_SIDES = {"right": "right", "left": "left", "bilateral": "right and left"}
_KIND = {"pacemaker": "cardiac pacemaker", "port catheter": "port catheter",
         "sternotomy wires": "sternal wire cerclage", "central venous catheter": "central venous catheter"}
_NUM = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass
class Report:
    clinical: str
    technique: str
    findings: str
    impressions: str
    mentions: dict[str, int] = field(default_factory=dict)  # all 18 labels: 1 / 0 / -1

    def row(self, volume_name: str) -> dict:
        return {"VolumeName": volume_name, "ClinicalInformation_EN": self.clinical, "Technique_EN": self.technique,
                "Findings_EN": self.findings, "Impressions_EN": self.impressions}


def join_lobes(lobes: list[str]) -> str:
    """``["right upper lobe", "left lower lobe"]`` → "right upper and left lower lobes"."""
    if not lobes:
        return "lungs"
    if len(lobes) == 1:
        return lobes[0]
    stems = [lobe.removesuffix(" lobe") for lobe in lobes]
    return ", ".join(stems[:-1]) + " and " + stems[-1] + " lobes"


def _slots(d: dict) -> dict:
    sev = d.get("severity") or "mild"
    lobes = d.get("lobes") or []
    loc = d.get("location") or ""
    if d["label"] == "Lymphadenopathy":
        stations = [it["station"] for it in d.get("items", [])]
        loc = stations[0] if len(stations) == 1 else ", ".join(stations[:-1]) + " and " + stations[-1]
    if d["label"] in ("Arterial wall calcification", "Coronary artery wall calcification") and d.get("items"):
        order = ["ascending aorta", "aortic arch", "descending aorta"]
        items = sorted(d["items"], key=lambda it: order.index(it) if it in order else 9)
        loc = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    if d["label"] == "Lung nodule" and d.get("items"):
        lobes = [d["items"][0]["lobe"]]
    if d["label"] == "Emphysema" and not loc:
        loc = "lungs bilaterally"
    kind = d.get("kind") or ""
    kind = _KIND.get(kind, kind)
    if d["label"] == "Atelectasis":
        kind = {"dependent": "dependent", "linear": "linear", "lobar": "lobar"}.get(d.get("kind"), "")
    s = {
        "side": d.get("side") or "", "sides": _SIDES.get(d.get("side"), ""), "lobes": join_lobes(lobes),
        "size": d.get("size_mm") if d.get("size_mm") is not None else "", "sev": sev,
        "amount": _AMOUNT.get(d.get("severity")), "loc": _LOC.get(loc, loc) or "lungs bilaterally", "kind": kind,
        "n": _NUM.get(d.get("count") or 1, str(d.get("count") or 1)), "ctr": f"{d.get('measure', 0.55):.2f}",
    }
    for k in list(s):
        v = str(s[k])
        s[k.capitalize()] = v[:1].upper() + v[1:]
    return s


def _fill(template: str, slots: dict) -> str:
    text = template.format(**slots)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def _usable(templates: list[str], d: dict) -> list[str]:
    count = d.get("count") or 1
    out = []
    for t in templates:
        if "{N}" in t or "{n}" in t:
            if count < 2:
                continue
        elif count >= 2 and d["label"] == "Lung nodule" and t.startswith(("A ", "There is a")):
            continue
        if ("{size}" in t or "{Size}" in t) and d.get("size_mm") is None:
            continue
        if "{ctr}" in t and "measure" not in d:
            continue
        if "{kind}" in t.lower() and not d.get("kind"):
            continue
        out.append(t)
    return out or templates[-1:]


def _words(sentences) -> int:
    return sum(len(s.split()) for s in sentences)


def write_report(findings: dict[str, dict], *, phrase_set: str = "A", seed: int = 0, contrast: bool = False,
                 slice_mm: float = 2.5, long: bool = False, max_words: int | None = None) -> Report:
    """A report for a study whose present findings (with details) are ``findings``."""
    if phrase_set not in PHRASES:
        raise ValueError(f"phrase_set must be one of {sorted(PHRASES)}, got {phrase_set!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 11])
    table = PHRASES[phrase_set]
    budget = max_words or (160 if long else 70)
    mentions = {lab: -1 for lab in LABELS}

    positive: dict[str, tuple[str, str]] = {}  # label -> (full sentence, short sentence)
    for lab in REPORT_ORDER:
        if lab not in findings:
            continue
        d = findings[lab]
        slots = _slots(d)
        ph = table[lab]
        hedge_ok = (d.get("severity") in (None, "mild")) and rng.random() < 0.2
        pool = _usable(ph["hedge"] if hedge_ok else ph["pos"], d)
        full = _fill(str(rng.choice(pool)), slots)
        short = _fill(str(rng.choice(_usable(ph["short"], d))), slots)
        positive[lab] = (full, short)
        mentions[lab] = 1
    # fit the present findings into the budget: compact the longest sentences first
    chosen = {lab: full for lab, (full, _) in positive.items()}
    for lab in sorted(positive, key=lambda k: -len(positive[k][0].split())):
        if _words(chosen.values()) <= budget:
            break
        chosen[lab] = positive[lab][1]

    # negations of absent findings, as the budget allows
    negs: dict[str, str] = {}
    absent = [lab for lab in REPORT_ORDER if lab not in findings and table[lab]["neg"]]
    wanted = [lab for lab in absent if rng.random() < NEGATION_RATE[lab] * (1.6 if long else 1.0)]
    used = set()
    for pair, options in COMBINED_NEG[phrase_set].items():
        if pair[0] in wanted and pair[1] in wanted and rng.random() < 0.5:
            sentence = str(rng.choice(options))
            if _words([*chosen.values(), *negs.values(), sentence]) <= budget:
                negs[pair[0]] = sentence
                used.update(pair)
                mentions[pair[0]] = mentions[pair[1]] = 0
    for lab in wanted:
        if lab in used:
            continue
        sentence = str(rng.choice(table[lab]["neg"]))
        if _words([*chosen.values(), *negs.values(), sentence]) > budget:
            continue
        negs[lab] = sentence
        mentions[lab] = 0
    normals = []
    for sentence, needs_absent in NORMALS[phrase_set]:
        if any(lab in findings for lab in needs_absent) or rng.random() > (0.5 if long else 0.25):
            continue
        if _words([*chosen.values(), *negs.values(), *normals, sentence]) <= budget:
            normals.append(sentence)

    ordered = []
    for lab in REPORT_ORDER:
        if lab in chosen:
            ordered.append(chosen[lab])
        if lab in negs:
            ordered.append(negs[lab])
    # normal statements go between the mediastinum and the lungs, as in a real report
    cut = next((i for i, s in enumerate(ordered) if any(w in s.lower() for w in ("lobe", "lung", "nodule"))),
               len(ordered))
    ordered[cut:cut] = normals
    findings_text = " ".join(ordered) if ordered else str(rng.choice(NO_ACUTE[phrase_set]))

    imp_labels = [lab for lab in REPORT_ORDER if lab in findings]
    if imp_labels:
        # the impression leads with what matters most clinically
        priority = ["Consolidation", "Pleural effusion", "Lung nodule", "Pericardial effusion", "Lymphadenopathy",
                    "Cardiomegaly", "Lung opacity", "Atelectasis", "Emphysema", "Bronchiectasis"]
        imp_labels.sort(key=lambda lab: priority.index(lab) if lab in priority else 99)
        lines = [_fill(str(rng.choice(_usable(table[lab]["imp"], findings[lab]))), _slots(findings[lab]))
                 for lab in imp_labels[:4]]
        impressions = " ".join(lines)
    else:
        impressions = str(rng.choice(NO_ACUTE[phrase_set]))

    clinical = str(rng.choice(CLINICAL[phrase_set]))
    thick = f"{slice_mm:g}"
    contrast_word = "Contrast-enhanced" if contrast else "Non-contrast"
    technique = _fill(str(rng.choice(TECHNIQUE[phrase_set])),
                      {"contrast": contrast_word, "contrast_l": contrast_word.lower(), "thick": thick})
    return Report(clinical, technique, findings_text, impressions, mentions)
