"""A small rule-based radiology report reader, written apart from the report templates.

It knows its own finding synonyms and negation/uncertainty cues (it never imports
``train.synth.phrases``) and reads a Findings text sentence by sentence:

* a sentence that names a finding and carries a negation cue → 0 (negated);
* a sentence that names it with an uncertainty cue ("likely", "cannot be excluded") → 1
  (our convention: hedged statements count as present);
* otherwise a sentence that names it → 1; a finding never named → −1.
"""

from __future__ import annotations

import re

from engine.labels import LABELS

# regexes per finding (lower-case text); order does not matter, each is tested on its own
SYNONYMS: dict[str, list[str]] = {
    "Medical material": [r"\bpacemaker\b", r"\bport\b", r"\bcatheter\b", r"\bsternal wire", r"\bcerclage\b",
                         r"\bsternotomy\b", r"\bmetallic\b", r"\bdevice\b"],
    "Arterial wall calcification": [r"(atheroscler|atherom|calcif|plaque).*(aort)", r"(aort).*(atheroscler|atherom|calcif|plaque)"],
    "Cardiomegaly": [r"cardiomegaly", r"\b(heart|cardiac)\b.*\b(enlarge|size|dimension)", r"enlarge.*\b(heart|cardiac)",
                     r"cardiac enlargement", r"cardiac silhouette"],
    "Pericardial effusion": [r"pericardi(al|um)\b.*(effusion|fluid)", r"(effusion|fluid).*pericardi"],
    "Coronary artery wall calcification": [r"coronary"],
    "Hiatal hernia": [r"hiat(al|us) hernia", r"esophageal hiatus"],
    "Lymphadenopathy": [r"lymphadenopathy", r"adenopathy", r"lymph node"],
    "Emphysema": [r"emphysem"],
    "Atelectasis": [r"atelecta"],
    "Lung nodule": [r"\bnodul", r"\bnodule"],
    "Lung opacity": [r"ground[- ]glass(?! nodul)", r"opacit", r"opacification", r"increased density"],
    "Pulmonary fibrotic sequela": [r"fibro(sis|tic)", r"scarring"],
    "Pleural effusion": [r"pleural (effusion|fluid|space)", r"pleural\b.*\b(effusion|fluid)"],
    "Mosaic attenuation pattern": [r"mosaic"],
    "Peribronchial thickening": [r"peribronchial", r"bronchial wall"],
    "Consolidation": [r"consolidat", r"airspace"],
    "Bronchiectasis": [r"bronchiecta", r"bronchial dilat", r"dilated bronchi"],
    "Interlobular septal thickening": [r"(?<!para)septal", r"\bsepta\b"],
}
NEGATION = [r"\bno\b", r"\bnot\b", r"\bwithout\b", r"\babsent\b", r"\bnegative\b", r"\bfree of\b",
            r"within normal", r"\bis normal\b", r"normal in size", r"\bunremarkable\b", r"contains? no\b",
            r"\bnor\b", r"\bnone\b"]
UNCERTAIN = [r"cannot be excluded", r"can ?not be ruled out", r"\blikely\b", r"\bprobabl[ey]\b", r"\bpossibl[ey]\b",
             r"suggestive of", r"\bmay represent\b", r"\bborderline\b"]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _named(sentence: str) -> list[str]:
    s = sentence.lower()
    hits = [lab for lab, pats in SYNONYMS.items() if any(re.search(p, s) for p in pats)]
    # "coronary" sentences are about coronaries; they name the aorta only if they say "aort"
    if "Coronary artery wall calcification" in hits and "Arterial wall calcification" in hits and "aort" not in s:
        hits.remove("Arterial wall calcification")
    # "septal" alone inside "peribronchial/septal" words is enough; "pleural space" without fluid words is
    # only a negation context ("pleural spaces contain no fluid")
    return hits


def read_report(findings_text: str) -> dict[str, int]:
    """Mentions per finding: 1 present (incl. hedged), 0 negated, −1 not mentioned."""
    out = {lab: -1 for lab in LABELS}
    for sentence in split_sentences(findings_text):
        s = sentence.lower()
        named = _named(sentence)
        if not named:
            continue
        uncertain = any(re.search(p, s) for p in UNCERTAIN)
        negated = not uncertain and any(re.search(p, s) for p in NEGATION)
        for lab in named:
            value = 0 if negated else 1
            out[lab] = max(out[lab], value) if out[lab] != -1 else value
    return out
