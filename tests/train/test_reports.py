"""Reports from the grammar: mention states agree with the image labels, the held-out wordings never
reuse a training form, traps (pseudo-negations, hedges, indications) get the right state, and the text
is clean English that fits a Whisper window."""

from __future__ import annotations

import re

import numpy as np
import pytest

from engine.labels import DICTATION_CLASSES, LABELS
from train.synth import grammar as G
from train.synth.cohort import sample_cohort
from train.synth.lexicon import FINDINGS
from train.synth.reports import WORDINGS, sample_details, write_report
from train.synth.wording_stats import collect_forms, wording_table


def _studies(n=60, seed=3):
    rng = np.random.default_rng(seed)
    return [{lab: sample_details(lab, rng) for lab in p.present} for p in sample_cohort(n, seed=seed)]


@pytest.fixture(scope="module")
def reports():
    out = []
    for wording in WORDINGS:
        for i, findings in enumerate(_studies()):
            for s in range(3):
                out.append((wording, findings, write_report(findings, wording=wording, seed=100 * i + s)))
    return out


def test_mentions_agree_with_the_image(reports):
    seen = set()
    for _, findings, r in reports:
        assert set(r.mentions) == set(LABELS)
        for lab, state in r.mentions.items():
            assert state in DICTATION_CLASSES
            seen.add(state)
            if lab in findings:  # every finding in the image is mentioned: stated, hedged or "stable"
                assert state in (G.PRESENT, G.UNCERTAIN), (lab, state, r.findings)
            else:
                assert state != G.PRESENT, (lab, r.findings)
    assert seen == set(DICTATION_CLASSES)


def test_every_mention_comes_from_a_sentence_and_hedges_fall_on_both_sides(reports):
    hedged_absent = hedged_present = 0
    for _, findings, r in reports:
        from_forms = {lab: st for lab, st, _ in r.forms}
        assert {k: v for k, v in r.mentions.items() if v != G.NOT_MENTIONED} == from_forms
        hedged_present += sum(st == G.UNCERTAIN and lab in findings for lab, st in from_forms.items())
        hedged_absent += sum(st == G.UNCERTAIN and lab not in findings for lab, st in from_forms.items())
    assert hedged_present > 10 and hedged_absent > 10


def test_held_out_wordings_share_no_structure_or_synonym_with_training():
    for kind, table in G.STRUCTURES.items():
        assert not table.get("core"), kind
        train = set(table["train"])
        for wording in ("valid", "test"):
            assert not train & set(table[wording]), (kind, wording)
    for lab, entry in FINDINGS.items():
        for key in ("terms", "neg_terms"):
            if key in entry:
                train = set(entry[key]["train"])
                for wording in ("valid", "test"):
                    assert not train & set(entry[key][wording]), (lab, key)


def test_forms_per_split_meet_the_goals_and_test_forms_are_unseen():
    forms = collect_forms(n_reports=1500, seed=1)
    rows, failures = wording_table(forms)
    assert failures == []
    for lab in LABELS:
        for state in (G.PRESENT, G.ABSENT):
            train = forms["train"][lab][state]
            assert not (forms["test"][lab][state] & train), lab  # every test form is new
            assert not (forms["valid"][lab][state] & train), lab


def test_traps_get_the_right_state():
    rng = np.random.default_rng(0)
    d = sample_details("Pleural effusion", rng)
    slots = __import__("train.synth.reports", fromlist=["_slots"])._slots(d)
    for seed in range(40):
        r = np.random.default_rng(seed)
        s = G.single("Pleural effusion", G.PRESENT, "train", r, slots, pseudo=True)
        assert s.states == {"Pleural effusion": G.PRESENT}
        assert re.search(r"No change|Stable|unchanged|No significant change", s.text), s.text
        i = G.indication("Consolidation", "test", r)
        assert i.spoken_only and i.states == {}
        u = G.single("Lung nodule", G.UNCERTAIN, "test", r, None)
        assert u.states == {"Lung nodule": G.UNCERTAIN}
    both = G.present_absent("Cardiomegaly", {"sev": "mild", "Sev": "Mild"}, "Pericardial effusion", "train", rng)
    assert both.states == {"Cardiomegaly": G.PRESENT, "Pericardial effusion": G.ABSENT}


def test_indication_and_spoken_commands_are_in_the_dictation_only(reports):
    with_indication = commands = 0
    for _wording, _, r in reports:
        assert not re.search(r"\b(period|full stop|new paragraph|new line|correction|scratch that)\b", r.findings)
        if re.match(r"(Indication|Clinical history|History|Reason for exam|Clinical question)", r.dictation):
            with_indication += 1
        if re.search(r" (period|stop|full stop)$", r.dictation):
            commands += 1
    assert with_indication > 10 and commands > 10


def test_text_is_clean_and_fits_a_window(reports):
    for _, _, r in reports:
        for text in (r.findings, r.impressions, r.dictation):
            assert "{" not in text and "a(n)" not in text.lower() and "  " not in text, text
            assert not re.search(r"\ba [aeio]\w", text), text
            assert "There are evidence" not in text
        assert len(r.findings.split()) <= 70 or len(r.forms) >= 5, r.findings  # only very sick chests run over
    findings = [len(r.findings.split()) for _, _, r in reports]
    words = [len(r.dictation.split()) for _, _, r in reports]
    assert np.median(findings) <= 70 and max(findings) <= 140
    assert np.median(words) <= 80 and np.percentile(words, 95) <= 120  # longer ones take a second window


def test_same_seed_same_report_and_seeds_vary():
    findings = _studies(3)[1]
    assert write_report(findings, seed=9) == write_report(findings, seed=9)
    assert len({write_report(findings, seed=s).findings for s in range(6)}) > 3


def test_unknown_wording_is_refused():
    with pytest.raises(ValueError, match="wording"):
        write_report({}, wording="B")
