"""How much wording each split's report grammar has: distinct sentence forms per finding and state.

A *form* is a sentence with its slots (size, side, lobes, severity...) unfilled, so "A 12 mm nodule in the
right upper lobe" and "A 7 mm nodule in the left lower lobe" are one form. ``speechct-train synth --stats``
prints, per wording (train / valid / test), the distinct forms that state each finding present and absent,
and for valid and test how many of them training never has. Reports are sampled from the grammar alone
(no phantoms): every finding present with probability ``p_present``, with :func:`sample_details`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from engine.labels import LABELS
from train.synth.grammar import ABSENT, PRESENT
from train.synth.reports import WORDINGS, sample_details, write_report

#: The goals the held-out splits are held to (the dictation-reader issue).
MIN_TRAIN = {"present": 30, "absent": 12}
MIN_NEW_TEST = {"present": 10, "absent": 5}


def collect_forms(n_reports: int = 3000, seed: int = 0, p_present: float = 0.3) -> dict:
    """``forms[wording][label][state]`` = set of forms, over ``n_reports`` sampled reports per wording."""
    forms: dict = {w: defaultdict(lambda: defaultdict(set)) for w in WORDINGS}
    for wording in WORDINGS:
        rng = np.random.default_rng([seed, WORDINGS.index(wording)])
        for _i in range(n_reports):
            present = [lab for lab in LABELS if rng.random() < p_present]
            findings = {lab: sample_details(lab, rng) for lab in present}
            report = write_report(findings, wording=wording, seed=int(rng.integers(1 << 31)))
            for lab, state, form in report.forms:
                forms[wording][lab][state].add(form)
    return forms


def wording_table(forms: dict) -> tuple[list[dict], list[str]]:
    """Rows per finding (counts) and the list of goal failures."""
    rows, failures = [], []
    for lab in LABELS:
        row = {"label": lab}
        train = forms["train"][lab]
        for wording in WORDINGS:
            for state in (PRESENT, ABSENT):
                got = forms[wording][lab][state]
                row[f"{wording}_{state}"] = len(got)
                if wording != "train":
                    row[f"{wording}_{state}_new"] = len(got - train[state])
        for state, need in MIN_TRAIN.items():
            if row[f"train_{state}"] < need:
                failures.append(f"{lab}: train has {row[f'train_{state}']} {state} forms (goal >= {need})")
        for state, need in MIN_NEW_TEST.items():
            if row[f"test_{state}_new"] < need:
                failures.append(f"{lab}: test has {row[f'test_{state}_new']} new {state} forms (goal >= {need})")
        rows.append(row)
    return rows, failures


def format_table(rows: list[dict]) -> str:
    width = max(len(r["label"]) for r in rows)
    head = (f"{'finding':{width}s}  train pres/neg   valid pres/neg (new)    test pres/neg (new)")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:{width}s}  {r['train_present']:5d} / {r['train_absent']:<5d}  "
                     f"{r['valid_present']:4d} ({r['valid_present_new']:3d}) / {r['valid_absent']:3d} "
                     f"({r['valid_absent_new']:3d})  {r['test_present']:4d} ({r['test_present_new']:3d}) / "
                     f"{r['test_absent']:3d} ({r['test_absent_new']:3d})")
    return "\n".join(lines)
