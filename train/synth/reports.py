"""Radiology reports that agree with a phantom's findings, what each says of every finding, and how
it is dictated.

``write_report(findings, wording=...)`` turns the instance details of
:func:`train.synth.phantom.make_phantom` (side, lobe, size in mm, severity, kind) into CT-RATE-style
``ClinicalInformation_EN``, ``Technique_EN``, ``Findings_EN`` and ``Impressions_EN``, the *dictation* (the
words a radiologist says: the findings with an indication, spoken commands, self-corrections and the
impression) and a mention state per finding (:mod:`train.synth.grammar`): ``present``, ``uncertain``,
``absent`` or ``not mentioned``. Present findings are always mentioned (present, hedged or by a
pseudo-negation such as "stable"); absent ones are negated, settled by a normal statement, hedged, or not
mentioned. Every sentence is drawn from the grammar of one *wording* (``train``, ``valid``, ``test``), so
the held-out splits use structures and synonyms training never hears.

Findings are kept short enough to be read aloud within one 30 s Whisper window (``max_words`` = 70 by
default, ~25 s at 165 words/min): present findings first, then negations and normal statements as the
budget allows; over budget, present findings are said compactly, and a chest with very many findings may
still run over (every finding in the image is always mentioned). ``long=True`` lifts the budget to 160.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.labels import LABELS
from train.synth import grammar as G
from train.synth.lexicon import DISTRACTORS, MULTI_NORMALS, part_items

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
    "Mosaic attenuation pattern": 0.08, "Interlobular septal thickening": 0.1, "Medical material": 0.1,
}
#: How often a finding is hedged: present ones (mild or without severity), and absent ones.
HEDGE_PRESENT, HEDGE_ABSENT = 0.15, 0.04
PSEUDO_RATE = 0.1  # a present finding stated as unchanged / stable / "no change in"
WORDINGS = ("train", "valid", "test")

CLINICAL = {
    "train": ["Cough.", "Shortness of breath.", "Follow-up of pulmonary nodule.", "Fever and cough.", "Chest pain.",
              "Malignancy staging.", "Dyspnea.", "Not given."],
    "valid": ["Persistent cough for two weeks.", "Breathlessness on exertion.", "Known lung nodule, control.",
              "Screening.", "Not provided."],
    "test": ["Fever of unknown origin.", "Follow-up after chemotherapy.", "Hemoptysis.", "Preoperative assessment.",
             "Unknown."],
}
TECHNIQUE = {
    "train": ["{contrast} chest CT was obtained in the axial plane with {thick} mm slice thickness.",
              "Axial {contrast_l} images of the thorax were acquired at {thick} mm."],
    "valid": ["Thorax CT, {contrast_l}, reconstructed at {thick} mm slices."],
    "test": ["{contrast} CT of the thorax with {thick} mm axial reconstructions."],
}
NO_ACUTE = {"train": ["No acute cardiopulmonary abnormality.", "No significant abnormality in the chest."],
            "valid": ["Chest CT within normal limits."], "test": ["Normal CT of the chest.", "Unremarkable study."]}


@dataclass
class Report:
    clinical: str
    technique: str
    findings: str
    impressions: str
    mentions: dict[str, str] = field(default_factory=dict)  # all 18 labels -> mention state
    dictation: str = ""  # what is read aloud
    forms: list[tuple[str, str, str]] = field(default_factory=list)  # (label, state, form) per mention
    sentences: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # Findings sentences + their states

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


_AMOUNT = {"mild": "small", "moderate": "moderate", "severe": "large", None: "small"}
_LOC = {"diffuse": "lungs bilaterally", "diffuse, subpleural": "lungs bilaterally", "lower zones": "lower lung zones"}
_SIDES = {"right": "right", "left": "left", "bilateral": "right and left"}
_KIND = {"pacemaker": "cardiac pacemaker", "port catheter": "port catheter",
         "sternotomy wires": "sternal wire cerclage", "central venous catheter": "central venous catheter"}
#: How reports name the devices of "Medical material" (its {kind} slot).
DEVICE_NAMES = tuple(_KIND.values())
_NUM = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


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


def sample_details(label: str, rng: np.random.Generator) -> dict:
    """Plausible instance details of ``label`` without drawing a phantom (for hedges about findings that are
    not in the image, and for sentence-level corpora)."""
    lobes_all = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"]
    sev = str(rng.choice(["mild", "moderate", "severe"], p=[0.5, 0.35, 0.15]))
    k = int(rng.integers(1, 4))
    lobes = sorted(rng.choice(lobes_all, size=k, replace=False).tolist(), key=lobes_all.index)
    sides = {lobe.split()[0] for lobe in lobes}
    side = "bilateral" if len(sides) == 2 else sides.pop()
    d = {"label": label, "severity": sev, "side": side, "lobes": lobes, "size_mm": None, "count": None, "kind": None,
         "location": None, "items": []}
    if label == "Lung nodule":
        d.update(size_mm=int(rng.integers(4, 25)), count=int(rng.choice([1, 1, 2, 3])),
                 kind=str(rng.choice(["solid", "ground-glass", "part-solid"])), lobes=lobes[:1])
    elif label in ("Pleural effusion", "Pericardial effusion", "Hiatal hernia"):
        d.update(size_mm=int(rng.integers(5, 40)), lobes=[])
    elif label == "Lymphadenopathy":
        stations = rng.choice(["prevascular", "right paratracheal", "subcarinal", "right hilar", "left hilar"],
                              size=int(rng.integers(1, 3)), replace=False).tolist()
        d.update(items=[{"station": s, "size_mm": int(rng.integers(11, 25))} for s in stations], lobes=[])
        d["size_mm"] = max(it["size_mm"] for it in d["items"])
    elif label in ("Arterial wall calcification", "Coronary artery wall calcification"):
        pool = (["ascending aorta", "aortic arch", "descending aorta"] if label.startswith("Arterial")
                else ["left anterior descending artery", "circumflex artery", "right coronary artery"])
        d.update(items=rng.choice(pool, size=int(rng.integers(1, 3)), replace=False).tolist(), lobes=[])
    elif label == "Medical material":
        d.update(kind=str(rng.choice(["pacemaker", "port catheter", "sternotomy wires", "central venous catheter"])),
                 location=str(rng.choice(["left infraclavicular", "right infraclavicular", "anterior chest wall"])),
                 lobes=[])
    elif label in ("Emphysema", "Mosaic attenuation pattern", "Interlobular septal thickening"):
        d["location"] = str(rng.choice(["diffuse", "upper lobes", "lower lobes"]))
        if label == "Emphysema":
            d["kind"] = str(rng.choice(["centrilobular", "paraseptal", "panlobular"]))
    elif label == "Atelectasis":
        d["kind"] = str(rng.choice(["linear", "dependent", "lobar"]))
    elif label == "Bronchiectasis":
        d["kind"] = str(rng.choice(["cylindrical", "varicose", "cystic"]))
    elif label == "Cardiomegaly":
        d.update(measure=round(float(rng.uniform(0.52, 0.65)), 2), lobes=[])
    return d


def _words(sentences) -> int:
    return sum(len(s.text.split()) for s in sentences)


def _states(findings: dict[str, dict], rng: np.random.Generator, long: bool) -> dict[str, str]:
    """The mention state the report will give each finding."""
    states = {}
    for lab in REPORT_ORDER:
        if lab in findings:
            mild = findings[lab].get("severity") in (None, "mild")
            states[lab] = G.UNCERTAIN if (mild and rng.random() < HEDGE_PRESENT) else G.PRESENT
        else:
            r = rng.random()
            negate = NEGATION_RATE[lab] * (1.6 if long else 1.0)
            states[lab] = G.ABSENT if r < negate else (G.UNCERTAIN if r < negate + HEDGE_ABSENT else G.NOT_MENTIONED)
    return states


def _body(findings: dict[str, dict], states: dict[str, str], wording: str, rng: np.random.Generator,
          budget: int) -> list[G.Sentence]:
    """The Findings sentences in reading order, combining findings into one sentence now and then."""
    slots = {lab: _slots(d) for lab, d in findings.items()}
    hedge_slots = {lab: _slots(sample_details(lab, rng)) for lab in REPORT_ORDER
                   if lab not in findings and states[lab] == G.UNCERTAIN}
    todo = [lab for lab in REPORT_ORDER if states[lab] != G.NOT_MENTIONED]
    # normal statements that settle two absent findings at once
    out: list[G.Sentence] = []
    done: set[str] = set()
    for text, settles in part_items(MULTI_NORMALS, wording):
        if all(states[lab] == G.ABSENT for lab in settles) and rng.random() < 0.4:
            out.append(G.Sentence(text, text, dict.fromkeys(settles, G.ABSENT)))
            done.update(settles)
    for i, lab in enumerate(todo):
        if lab in done:
            continue
        state = states[lab]
        rest = [other for other in todo[i + 1:] if other not in done]
        if state == G.PRESENT and rest and rng.random() < 0.3:
            other = rest[0]
            if states[other] == G.PRESENT:
                out.append(G.present_present(lab, slots[lab], other, slots[other], wording, rng))
                done.update((lab, other))
                continue
            if states[other] == G.ABSENT:
                out.append(G.present_absent(lab, slots[lab], other, wording, rng))
                done.update((lab, other))
                continue
        if state == G.ABSENT:
            group = [lab] + [o for o in rest if states[o] == G.ABSENT][:2]
            if len(group) >= 2 and rng.random() < 0.35:
                group = group[:int(rng.integers(2, len(group) + 1))]
                out.append(G.list_absent(group, wording, rng))
                done.update(out[-1].states)
                continue
        if state == G.PRESENT:
            out.append(G.single(lab, state, wording, rng, slots[lab], pseudo=rng.random() < PSEUDO_RATE))
        elif state == G.UNCERTAIN:
            out.append(G.single(lab, state, wording, rng, slots.get(lab) or hedge_slots[lab]))
        else:
            out.append(G.single(lab, state, wording, rng, None))
        done.add(lab)
    for text in part_items(DISTRACTORS, wording):
        if rng.random() < 0.12:
            out.insert(int(rng.integers(len(out) + 1)), G.Sentence(text, text, {}))
    # over budget: drop what says least (distractors, then absent-only sentences), never a present finding
    def weight(s: G.Sentence) -> int:
        if not s.states:
            return 0
        return 2 if any(v in (G.PRESENT, G.UNCERTAIN) and lab in findings for lab, v in s.states.items()) else 1
    while _words(out) > budget:
        droppable = [s for s in out if weight(s) < 2]
        if not droppable:
            break
        out.remove(min(droppable, key=weight))
    # still over: say the present findings compactly, the longest sentence first; then split pairs apart
    for s in sorted(out, key=lambda s: -len(s.text.split())):
        if _words(out) <= budget:
            break
        if len(s.states) != 1:
            continue
        (lab, state), = s.states.items()
        short = G.single(lab, state, wording, rng, slots.get(lab) or hedge_slots.get(lab), compact=True)
        if len(short.text.split()) < len(s.text.split()):
            out[out.index(s)] = short
    return out


def _spoken(body: list[G.Sentence], impression: list[G.Sentence], findings: dict, wording: str,
            rng: np.random.Generator) -> str:
    """How a radiologist dictates it: maybe an indication first, spoken punctuation, a self-correction."""
    parts: list[str] = []
    if rng.random() < 0.2:
        parts.append(G.indication(str(rng.choice(REPORT_ORDER)), wording, rng).text)
    correction = G.part(G.CORRECTION, wording)
    for s in body:
        text = s.text
        if rng.random() < 0.08:
            for a, b in (("right", "left"), ("left", "right"), ("upper", "lower"), ("lower", "upper")):
                if f" {a} " in text:
                    text = text.replace(f" {a} ", f" {b}{correction[int(rng.integers(len(correction)))]}{a} ", 1)
                    break
        parts.append(text)
    if impression:
        parts.append(G.part(G.IMPRESSION, wording)[0])
        parts.extend(s.text for s in impression)
    text = " ".join(parts)
    if rng.random() < 0.3:  # dictation style: punctuation is spoken
        cmd = G.COMMANDS[wording]
        text = text.replace(",", cmd["comma"]).replace("?", cmd["period"])
        text = text.replace(". ", cmd["period"] + " ").rstrip(".") + cmd["period"]
        text = text.replace(":", cmd["paragraph"])
    return text


def write_report(findings: dict[str, dict], *, wording: str = "train", seed: int = 0, contrast: bool = False,
                 slice_mm: float = 2.5, long: bool = False, max_words: int | None = None,
                 spoken_impression: float = 0.35) -> Report:
    """A report for a study whose present findings (with details) are ``findings``."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 12])
    budget = max_words or (160 if long else 70)
    states = _states(findings, rng, long)
    body = _body(findings, states, wording, rng, budget)
    mentions = dict.fromkeys(LABELS, G.NOT_MENTIONED)
    forms = []
    for s in body:
        for lab, st in s.states.items():
            mentions[lab] = st
            forms.append((lab, st, s.form))
    findings_text = " ".join(s.text for s in body) or str(rng.choice(NO_ACUTE[wording]))

    # the impression restates the present findings (most important first) in the same states
    priority = ["Consolidation", "Pleural effusion", "Lung nodule", "Pericardial effusion", "Lymphadenopathy",
                "Cardiomegaly", "Lung opacity", "Atelectasis", "Emphysema", "Bronchiectasis"]
    imp_labels = sorted((lab for lab in REPORT_ORDER if lab in findings),
                        key=lambda lab: priority.index(lab) if lab in priority else 99)[:3]
    impression = []
    for lab in imp_labels:
        sl = _slots(findings[lab])
        phrase = G.noun_phrase(lab, wording, rng, sl, modifiers=False)
        loc, _ = G.location(lab, wording, rng, sl)
        if mentions[lab] == G.UNCERTAIN:
            form = "Possible " + phrase.bare + loc + "." if wording == "train" else "Suspected " + phrase.bare + loc + "."
        else:
            form = phrase.bare + loc + "."
        impression.append(G.Sentence(form, G.finish(form, sl), {lab: mentions[lab]}))
    impressions = " ".join(s.text for s in impression) or str(rng.choice(NO_ACUTE[wording]))
    spoken_imp = impression if rng.random() < spoken_impression else []
    dictation = _spoken(body, spoken_imp, findings, wording, rng) if body else findings_text

    clinical = str(rng.choice(CLINICAL[wording]))
    contrast_word = "Contrast-enhanced" if contrast else "Non-contrast"
    technique = G.finish(str(rng.choice(TECHNIQUE[wording])),
                         {"contrast": contrast_word, "contrast_l": contrast_word.lower(), "thick": f"{slice_mm:g}"})
    return Report(clinical, technique, findings_text, impressions, mentions, dictation, forms,
                  [(s.text, dict(s.states)) for s in body])
