"""The cascade's learned transcript reader: trained on text only, read back from its folder."""

import json

import numpy as np
import torch

from engine.labels import DICTATION_CLASSES, LABELS
from train.recipes import load_run_config
from train.text_reader import extra_training_reports, load_text_reader, read_texts, train_text_reader

from .training_fixtures import SMOKE_CONFIG, make_tiny_data


def test_extra_reports_are_training_wording_and_deterministic():
    a, b = extra_training_reports(20, seed=3), extra_training_reports(20, seed=3)
    assert [t for t, _ in a] == [t for t, _ in b] and len(a) == 20
    assert all(m.shape == (len(LABELS),) and m.max() < len(DICTATION_CLASSES) for _, m in a)
    present = DICTATION_CLASSES.index("present")
    assert sum(int((m == present).sum()) for _, m in a) > 0


def test_text_reader_trains_saves_and_reads(tmp_path):
    torch.set_num_threads(1)
    data = make_tiny_data(tmp_path / "data", n_train=8, n_valid=4)
    summary = train_text_reader(load_run_config(SMOKE_CONFIG), data, tmp_path / "run" / "text_reader",
                                extra_reports=60, epochs=2, progress=False)
    assert summary["n_train"] == 68 and summary["best_epoch"] in (1, 2)
    meta = json.loads((tmp_path / "run" / "text_reader" / "head.json").read_text())
    assert meta["tower"]["path"] is None and meta["config"]["n_classes"] == 4
    tower, head = load_text_reader(tmp_path / "run" / "text_reader")
    pred = read_texts(tower, head, ["No pleural effusion.", "A small left pleural effusion is seen."])
    assert pred.shape == (2, len(LABELS)) and np.isin(pred, range(4)).all()
