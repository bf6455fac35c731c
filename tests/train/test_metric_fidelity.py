"""Metric fidelity: our zero-shot metrics equal CT-CLIP's formulas, re-derived here with
scikit-learn and independently of train.metrics (its scripts/bootstrap_values.py and
scripts/eval.py, read in ibrahimethemhamamci/CT-CLIP); and our bootstrap CI has width > 0 where
CT-CLIP's (resampling commented out) collapses to zero width."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, auc, confusion_matrix, f1_score, precision_score, roc_curve

from engine.labels import LABELS
from train.metrics import ZeroShotConfig, zero_shot_metrics

#: Six findings keep CT-CLIP's slow confusion_matrix loop (100 calls per finding) quick.
NAMES = LABELS[:6]


def ctclip_find_threshold(probabilities, true_labels):
    """CT-CLIP's find_threshold, re-derived: 100-point grid, strict '>', distance to (0, 1), '<='."""
    best_threshold, best_roc = 0.0, 10000.0
    for threshold in np.linspace(0, 1, 100):
        predictions = (probabilities > threshold).astype(int)
        c = confusion_matrix(true_labels, predictions)
        tp_r = c[1, 1] / (c[1, 1] + c[1, 0])
        fp_r = c[0, 1] / (c[0, 1] + c[0, 0])
        current = math.sqrt((1 - tp_r) ** 2 + fp_r**2)
        if current <= best_roc:
            best_roc, best_threshold = current, threshold
    return best_threshold


def ctclip_metrics(predicted, labels, thresholds):
    """CT-CLIP's per-finding AUROC (roc_curve + auc, as eval.plot_roc), weighted F1, accuracy,
    binary precision at the given thresholds."""
    out = []
    for i in range(labels.shape[1]):
        fpr, tpr, _ = roc_curve(labels[:, i], predicted[:, i])
        pred = (predicted[:, i] > thresholds[i]).astype(int)
        out.append({
            "auroc": auc(fpr, tpr),
            "f1": f1_score(labels[:, i], pred, average="weighted"),
            "accuracy": accuracy_score(labels[:, i], pred),
            "precision": precision_score(labels[:, i], pred),
        })
    return out


def ctclip_bootstrap(predicted, labels, thresholds, n=4):
    """CT-CLIP's bootstrap loop as published: the indices are drawn, but the resampling lines
    are commented out, so every draw evaluates the full set."""
    draws = []
    for _ in range(n):
        np.random.choice(range(len(labels)), size=len(labels), replace=True)  # drawn, then unused
        sampled_labels, sampled_predicted = labels, predicted
        per = ctclip_metrics(sampled_predicted, sampled_labels, thresholds)
        draws.append(np.mean([p["auroc"] for p in per]))
    return np.array(draws)


@pytest.fixture(scope="module")
def fixed():
    rng = np.random.default_rng(2510_02322)
    n, L = 120, len(NAMES)
    labels = (rng.random((n, L)) < rng.uniform(0.1, 0.5, L)).astype(int)
    labels[0], labels[1] = 1, 0
    logits = 0.9 * (2 * labels - 1) + rng.normal(size=(n, L))
    predicted = np.round(1 / (1 + np.exp(-logits)), 3)  # rounding makes ties, as float32 softmax outputs do
    thresholds = [ctclip_find_threshold(predicted[:, i], labels[:, i]) for i in range(L)]
    return predicted, labels, thresholds


def test_thresholds_equal_ctclip_find_threshold(fixed):
    predicted, labels, thresholds = fixed
    ours = zero_shot_metrics(predicted, labels, NAMES, ZeroShotConfig(n_boot=0))
    for i, name in enumerate(NAMES):
        assert ours["thresholds"][name] == thresholds[i]


def test_point_metrics_equal_ctclip(fixed):
    predicted, labels, thresholds = fixed
    ref = ctclip_metrics(predicted, labels, thresholds)
    ours = zero_shot_metrics(predicted, labels, NAMES, ZeroShotConfig(n_boot=0))
    for i, name in enumerate(NAMES):
        for m in ("auroc", "f1", "accuracy", "precision"):
            assert ours["per_finding"][name][m] == pytest.approx(ref[i][m], abs=1e-12), (name, m)
    for m in ("auroc", "f1", "accuracy", "precision"):
        assert ours["macro"][m]["value"] == pytest.approx(np.mean([r[m] for r in ref]), abs=1e-12)


def test_our_ci_has_width_where_ctclips_collapses(fixed):
    predicted, labels, thresholds = fixed
    theirs = ctclip_bootstrap(predicted, labels, thresholds)
    lo, hi = np.percentile(theirs, [2.5, 97.5])
    assert hi - lo == 0.0  # CT-CLIP: every draw is the full set
    ours = zero_shot_metrics(predicted, labels, NAMES, ZeroShotConfig(n_boot=200, seed=0))
    for m in ("auroc", "f1", "accuracy", "precision"):
        lo, hi = ours["macro"][m]["ci"]
        assert hi - lo > 0.01, m
        assert lo <= ours["macro"][m]["value"] <= hi, m
