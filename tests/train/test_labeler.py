"""The rule labeler (the cascade's reader, and label-mentions for real CT-RATE): NegEx/ConText triggers
from the training lists only, four states, traps, and the label-mentions command."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from engine.errors import DataError
from engine.labels import DICTATION_CLASSES, LABELS
from train.labeler import label_report, training_lexicon
from train.synth.cohort import sample_cohort
from train.synth.reports import sample_details, write_report


@pytest.mark.parametrize("text, label, state", [
    ("No pleural effusion.", "Pleural effusion", "absent"),
    ("There is a small right pleural effusion.", "Pleural effusion", "present"),
    ("No change in the pleural effusion.", "Pleural effusion", "present"),  # pseudo-negation
    ("Stable pulmonary nodule in the right upper lobe.", "Lung nodule", "present"),
    ("A thin pericardial effusion is likely.", "Pericardial effusion", "uncertain"),
    ("Consolidation in the left lower lobe cannot be excluded.", "Consolidation", "uncertain"),
    ("Cardiomegaly without pericardial effusion.", "Pericardial effusion", "absent"),
    ("Cardiomegaly without pericardial effusion.", "Cardiomegaly", "present"),
    ("There is cardiomegaly, but no pericardial effusion.", "Cardiomegaly", "present"),
    ("No pleural effusion, emphysema or consolidation.", "Consolidation", "absent"),
    ("The heart is normal in size.", "Cardiomegaly", "absent"),
    ("The lungs are clear.", "Lung opacity", "absent"),
    ("Indication: rule out consolidation. The heart is enlarged.", "Consolidation", "not mentioned"),
    ("Emphysema is seen period no pleural effusion period", "Pleural effusion", "absent"),
    ("Areas of low attenuation consistent with emphysema.", "Emphysema", "present"),
])
def test_sentences(text, label, state):
    assert label_report(text)[label] == state


def test_reads_training_wording_perfectly_and_knows_no_held_out_trigger():
    lex = training_lexicon()
    assert "has resolved" not in lex.post["absent"] and "could be present" not in lex.post["uncertain"]
    rng = np.random.default_rng(5)
    wrong = 0
    for i, pt in enumerate(sample_cohort(80, seed=11)):
        r = write_report({lab: sample_details(lab, rng) for lab in pt.present}, wording="train", seed=i)
        got = label_report(r.dictation, lex)
        wrong += sum(got[lab] != r.mentions[lab] for lab in LABELS)
    assert wrong <= 2
    # a held-out trigger is outside its lexicon: "has resolved" is read as a plain mention
    assert label_report("Pleural effusion has resolved.")["Pleural effusion"] == "present"


def test_label_mentions_command_on_a_ctrate_tree(tmp_path):
    from train.cli import main
    from train.mentions import read_mentions

    ds = tmp_path / "ct" / "dataset"
    (ds / "radiology_text_reports").mkdir(parents=True)
    with open(ds / "radiology_text_reports" / "train_reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        w.writerow(["train_1_a_1.nii.gz", "", "", "No pleural effusion. Possible consolidation in the left lower lobe.",
                    "Cardiomegaly."])
        w.writerow(["train_2_a_1.nii.gz", "", "", "The lungs are clear.", ""])
    assert main(["label-mentions", "--ct-rate", str(tmp_path / "ct"), "--split", "train"]) == 0
    m = read_mentions(ds, "train")
    row = dict(zip(LABELS, (DICTATION_CLASSES[i] for i in m["train_1_a_1.nii.gz"])))
    assert (row["Pleural effusion"], row["Consolidation"], row["Cardiomegaly"], row["Emphysema"]) == (
        "absent", "uncertain", "present", "not mentioned")
    assert DICTATION_CLASSES[m["train_2_a_1.nii.gz"][LABELS.index("Consolidation")]] == "absent"
    with pytest.raises(DataError, match="already here"):
        import argparse

        from train.commands.label_mentions import run
        run(argparse.Namespace(ct_rate=tmp_path / "ct", split=["train"], force=False))
