"""Evaluation metrics: CT-CLIP's zero-shot protocol reproduced, then done right, plus retrieval.

Zero-shot probabilities come from :func:`engine.findings.zero_shot_probabilities` (the one
implementation); everything here works on ``scores [N, L]`` (P(present) per study and finding)
and ``labels [N, L]`` (0/1).

CT-CLIP's protocol (scripts/bootstrap_values.py, scripts/eval.py), reproduced exactly:

* AUROC per finding (``sklearn.metrics.roc_auc_score``);
* threshold per finding = the point of ``np.linspace(0, 1, 100)`` whose (FPR, TPR) with the
  rule ``score > threshold`` lies closest (Euclidean) to the ROC corner (0, 1); ties go to the
  *last* such grid point (CT-CLIP compares with ``<=``);
* at that threshold: F1 with ``average="weighted"``, accuracy, binary precision;
* macro means over findings.

Where CT-CLIP is wrong we differ, and say so in the output:

* its bootstrap never resamples (the two resampling lines are commented out), so every draw
  is the full set and its CIs have zero width; ours resamples studies with replacement
  (``n_boot`` draws from ``np.random.default_rng(seed)``), thresholds fixed as chosen;
  a draw in which a finding has no positive (or no negative) study is skipped *for that
  finding*, and the number of skipped draws is reported per finding; the macro value of a draw
  is the mean over the findings it did not skip;
* the threshold can be chosen on a separate calibration subset (``threshold_on="calibration"``)
  instead of on the very studies it is then scored on (CT-CLIP's way, ``"eval"``).

Bootstrap statistics are computed from confusion counts and ranks, vectorised over draws
(1000 draws × 18 findings through scikit-learn calls take about a minute per system on this
CPU); ``tests/train/test_metrics.py`` proves them equal to scikit-learn's on every draw kind.

Beyond CT-CLIP, per finding (:data:`SKILL_METRICS`, on the same bootstrap draws, skipped alike):

* AUPRC = average precision (``sklearn.metrics.average_precision_score``: the step sum
  ``Σ (R_k − R_{k−1}) P_k`` over distinct score thresholds, no interpolation); a random score's
  AUPRC is the finding's prevalence, reported beside it;
* ECE (expected calibration error) of P(present) with :data:`ECE_BINS` equal-width bins on [0, 1]
  (bin ``min(floor(10 p), 9)``): ``Σ_b (n_b / N) · |mean(y in b) − mean(p in b)|``;
* the centred AUROC: each study's zero-shot logits (``s · (cos(x, present) − cos(x, absent))``,
  :func:`pair_logits`) minus their mean over the model's findings, then AUROC per finding. A
  shared "how abnormal is this chest" axis raises every finding's logit of a sick chest together:
  it inflates the plain AUROC (findings co-occur) and cancels in the centred one, which keeps only
  what tells one finding from the others in the same study.

The encoder's ceiling, :func:`linear_probe`: a supervised linear read-out of the same CT embeddings,
cross-validated on the evaluated studies (see its docstring); AUROC per finding with bootstrap CIs
on the out-of-fold scores (:func:`auroc_with_ci`).

Retrieval (speech→CT, CT→speech): Recall@k = fraction of queries whose own partner ranks in
the top k by cosine (ties counted in the query's favour only when strictly equal scores exist,
see :func:`recall_at_k`), with the random baseline ``min(k, N) / N`` beside it.

CT→CT label-overlap MAP@k (CT-CLIP's "volume to volume" score, our definition): for each query
volume, the gallery is every *other* volume with at least one positive label (CT-CLIP keeps that
gallery filter but lets the query retrieve itself); take its k nearest by cosine and average the
Jaccard overlap ``|a ∧ b| / |a ∨ b|`` of their 0/1 label vectors with the query's; the score is the
mean over queries, computed afresh for every k (CT-CLIP's accumulator carries over from one k to
the next). The random baseline is the mean Jaccard of a query to its whole gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    roc_auc_score,
    roc_curve,
)

from engine.findings import zero_shot_probabilities
from engine.labels import LABELS
from train.rad_chestct import rad_chestct_labels, to_rad_chestct

#: CT-CLIP's threshold grid: ``np.linspace(0, 1, 100)`` (100 points, step 1/99).
THRESHOLD_GRID = np.linspace(0.0, 1.0, 100)
METRICS = ("auroc", "f1", "accuracy", "precision")
#: Finding-specific skill beyond CT-CLIP's protocol (module docstring); ECE is lower-is-better.
SKILL_METRICS = ("auprc", "ece", "centred_auroc")
#: Equal-width calibration bins of P(present) on [0, 1].
ECE_BINS = 10
RECALL_KS = (1, 5, 10, 50, 100)
MAP_KS = (1, 5, 10, 50)


# --------------------------------------------------------------------------- thresholds


def roc_corner_threshold(scores: np.ndarray, labels: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """CT-CLIP's ``find_threshold``: the grid point whose (FPR, TPR) is closest to (0, 1).

    Predictions are ``scores > t``; distance ``sqrt((1 − TPR)² + FPR²)``; the last grid point
    among equals wins (CT-CLIP's ``<=``). Needs at least one positive and one negative.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("a ROC-corner threshold needs at least one positive and one negative study")
    pred = s[None, :] > np.asarray(grid, dtype=np.float64)[:, None]  # [G, N]
    tpr = (pred & y).sum(axis=1) / pos
    fpr = (pred & ~y).sum(axis=1) / neg
    dist = np.sqrt((1.0 - tpr) ** 2 + fpr**2)
    best = np.flatnonzero(dist <= dist.min())[-1]  # floating ties: exact equality as CT-CLIP's <=
    return float(grid[best])


def roc_points(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """sklearn's ROC curve (for plots and JSON), ``{"fpr", "tpr", "thresholds"}``."""
    fpr, tpr, thr = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.clip(thr, 0, 1).tolist()}


# --------------------------------------------------------------------------- point metrics


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, weighted F1, accuracy and binary precision of one finding (scikit-learn).

    AUROC is NaN when the labels hold one class only. Precision with no positive prediction is 0
    (scikit-learn's default value, which CT-CLIP inherits; ``zero_division=0`` silences its warning).
    """
    y = np.asarray(labels).astype(int).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pred = (s > threshold).astype(int)
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")
    return {
        "auroc": auroc,
        "f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
    }


def choose_thresholds(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-finding ROC-corner thresholds ``[L]``; 0.5 where a finding has one class only (said in
    :func:`zero_shot_metrics`'s ``notes``)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    out = np.full(scores.shape[1], 0.5)
    for j in range(scores.shape[1]):
        if 0 < labels[:, j].sum() < labels.shape[0]:
            out[j] = roc_corner_threshold(scores[:, j], labels[:, j])
    return out


# --------------------------------------------------------------------------- vectorised bootstrap


def _auroc_rows(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC per row of ``s [B, N]`` with 0/1 ``y [B, N]`` (Mann–Whitney with average ranks,
    which is what ``roc_auc_score`` computes); NaN where a row has one class."""
    ranks = rankdata(s, axis=1, method="average")
    pos = y.sum(axis=1)
    neg = y.shape[1] - pos
    u = (ranks * y).sum(axis=1) - pos * (pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc


def _threshold_rows(s: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Weighted F1, accuracy, binary precision per row from confusion counts (sklearn's formulas,
    0 for an undefined ratio as sklearn's ``zero_division`` default gives)."""
    pred = s > threshold
    yb = y.astype(bool)
    n = y.shape[1]
    tp = (pred & yb).sum(axis=1).astype(np.float64)
    fp = (pred & ~yb).sum(axis=1).astype(np.float64)
    fn = (~pred & yb).sum(axis=1).astype(np.float64)
    tn = n - tp - fp - fn

    def ratio(a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)

    f1_pos = ratio(2 * tp, 2 * tp + fp + fn)
    f1_neg = ratio(2 * tn, 2 * tn + fn + fp)
    support_pos, support_neg = tp + fn, tn + fp
    return {
        "f1": (support_pos * f1_pos + support_neg * f1_neg) / n,
        "accuracy": (tp + tn) / n,
        "precision": ratio(tp, tp + fp),
    }


def _average_precision_rows(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Average precision per row of ``s [B, N]`` with 0/1 ``y [B, N]``, exactly
    ``average_precision_score``: each positive contributes the precision at the end of its group of
    tied scores (a threshold admits a whole tie group at once); NaN where a row has no positive."""
    n = s.shape[1]
    order = np.argsort(-s, axis=1, kind="stable")
    ss = np.take_along_axis(s, order, axis=1)
    yy = np.take_along_axis(y, order, axis=1).astype(np.float64)
    precision = np.cumsum(yy, axis=1) / np.arange(1, n + 1)
    end = np.ones(ss.shape, dtype=bool)
    end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    group_end = np.where(end, np.arange(n), n)  # position → the last position of its tie group
    group_end = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]
    pos = yy.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (yy * np.take_along_axis(precision, group_end, axis=1)).sum(axis=1) / pos
    ap[pos == 0] = np.nan
    return ap


def _ece_rows(p: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error per row (module docstring; equal-width bins, the last one closed).

    ``Σ_b (n_b / N) |ȳ_b − p̄_b|`` is ``Σ_b |Σ_{i∈b} (y_i − p_i)| / N``, which is what is summed."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    gap = np.asarray(y, dtype=np.float64) - p
    rows = p.shape[0]
    flat = (bins + n_bins * np.arange(rows)[:, None]).ravel()  # (row, bin) → one index
    per_bin = np.bincount(flat, weights=gap.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    return np.abs(per_bin).sum(axis=1) / p.shape[1]


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of one finding's P(present) ``p [N]`` against 0/1 ``y [N]`` (module docstring)."""
    return float(_ece_rows(np.asarray(p).reshape(1, -1), np.asarray(y).reshape(1, -1), n_bins)[0])


def pair_logits(image_emb, present, absent, logit_scale: float) -> np.ndarray:
    """The zero-shot logit per image and finding, ``[N, L]`` float64: ``s · (cos(x, present_l) −
    cos(x, absent_l))``, whose sigmoid is :func:`engine.findings.zero_shot_probabilities`'s softmax over
    the prompt pair (computed here in float64, where P(present) in float32 saturates at 0 or 1).
    ``present`` / ``absent`` are a :class:`PromptBank`'s ``[L, D]`` (voices already averaged)."""
    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    x = unit(np.atleast_2d(image_emb))
    return float(logit_scale) * (x @ unit(present).T - x @ unit(absent).T)


def logits_from_probabilities(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """``log(p / (1 − p))`` with ``p`` clipped to ``[eps, 1 − eps]`` (when only probabilities are known)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def centre_logits(logits: np.ndarray) -> np.ndarray:
    """Each study's logits minus their mean over its findings (``[N, L]``): removes the shared axis."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits - logits.mean(axis=1, keepdims=True)


def _skill_draw_metrics(scores, labels, centred, idx) -> dict[str, np.ndarray]:
    """:data:`SKILL_METRICS` per draw and finding ``{metric: [B, L]}``, NaN where a draw is skipped."""
    b, L = idx.shape[0], scores.shape[1]
    out = {m: np.full((b, L), np.nan) for m in SKILL_METRICS}
    for j in range(L):
        y = labels[idx, j].astype(np.int64)
        pos = y.sum(axis=1)
        skip = (pos == 0) | (pos == y.shape[1])
        out["auprc"][:, j] = _average_precision_rows(scores[idx, j], y)
        out["ece"][:, j] = _ece_rows(scores[idx, j], y)
        out["centred_auroc"][:, j] = _auroc_rows(centred[idx, j], y)
        for m in SKILL_METRICS:
            out[m][skip, j] = np.nan
    return out


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` study indices drawn with replacement (one generator, seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _draw_metrics(scores, labels, thresholds, idx) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per draw and finding metrics ``{metric: [B, L]}`` (NaN where skipped) and the skip mask ``[B, L]``."""
    b, L = idx.shape[0], scores.shape[1]
    out = {m: np.full((b, L), np.nan) for m in METRICS}
    skipped = np.zeros((b, L), dtype=bool)
    for j in range(L):
        s = scores[idx, j]
        y = labels[idx, j].astype(np.int64)
        pos = y.sum(axis=1)
        skip = (pos == 0) | (pos == y.shape[1])
        skipped[:, j] = skip
        out["auroc"][:, j] = _auroc_rows(s, y)
        for name, value in _threshold_rows(s, y, thresholds[j]).items():
            out[name][:, j] = value
        for m in METRICS:
            out[m][skip, j] = np.nan
    return out, skipped


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN (skipped findings); NaN for an all-NaN row, silently."""
    if x.size == 0:
        return np.zeros(x.shape[:-1])
    count = (~np.isnan(x)).sum(axis=-1)
    total = np.nansum(x, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _ci(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- zero-shot evaluation


def select_labels(scores: np.ndarray, labels: np.ndarray, names: Sequence[str], mode: int | str = 18):
    """``mode`` 18: as given; 16: RAD-ChestCT style (Mosaic dropped, calcifications merged by max)."""
    if str(mode) == "18":
        return np.asarray(scores), np.asarray(labels), list(names)
    if str(mode) == "16":
        return to_rad_chestct(scores, names), to_rad_chestct(labels, names), list(rad_chestct_labels(names))
    raise ValueError(f"label mode must be 18 or 16, got {mode!r}")


def calibration_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, evaluation) study indices: a seeded permutation, ``fraction`` first."""
    if not 0 < fraction < 1:
        raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, min(n - 1, int(round(fraction * n))))
    return np.sort(perm[:k]), np.sort(perm[k:])


@dataclass
class ZeroShotConfig:
    """How :func:`zero_shot_metrics` runs. ``threshold_on``: ``"eval"`` (CT-CLIP) or ``"calibration"``."""

    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    threshold_on: str = "eval"
    calibration_fraction: float = 0.3
    labels_mode: int = 18


def zero_shot_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] = LABELS,
    config: ZeroShotConfig | None = None,
    *,
    thresholds: np.ndarray | None = None,
    logits: np.ndarray | None = None,
) -> dict:
    """Per-finding and macro AUROC / weighted F1 / accuracy / precision with bootstrap CIs, and the
    finding-specific :data:`SKILL_METRICS` (AUPRC, ECE, centred AUROC) on the same draws.

    ``scores [N, L]`` P(present), ``labels [N, L]`` 0/1, ``names`` the L finding names.
    ``thresholds`` (``[L]``, e.g. a bundle's) skip threshold selection when given. ``logits [N, L]``:
    the zero-shot logits the centred AUROC centres (:func:`pair_logits`); else they are recovered
    from ``scores`` (clipped where P saturated). Centring is over all L findings, before a 16-label
    selection. Returns a JSON-ready dict: ``macro`` {metric: {value, ci: [lo, hi], std}},
    ``per_finding`` {name: {metric: value, threshold, positives, prevalence, skipped_draws, ci:
    {metric: [lo, hi]}}}, ``thresholds``, ``n_studies``, ``threshold_on``, ``ece_bins``, ``notes``.
    """
    cfg = config or ZeroShotConfig()
    all_names = list(names)
    raw = logits_from_probabilities(scores) if logits is None else np.asarray(logits, dtype=np.float64)
    if raw.shape != np.shape(scores):
        raise ValueError(f"logits {raw.shape} and scores {np.shape(scores)} differ in shape")
    centred_all = centre_logits(raw)
    centred = select_labels(centred_all, labels, all_names, cfg.labels_mode)[0]
    scores, labels, names = select_labels(scores, labels, all_names, cfg.labels_mode)
    scores = np.asarray(scores, dtype=np.float64)
    labels = (np.asarray(labels) > 0).astype(np.int64)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, {len(names)}]")
    notes = []
    if thresholds is not None:
        thresholds = np.asarray(thresholds, dtype=np.float64)
        eval_idx = np.arange(scores.shape[0])
        how = "given"
    elif cfg.threshold_on == "eval":
        thresholds = choose_thresholds(scores, labels)
        eval_idx = np.arange(scores.shape[0])
        how = "eval"
    elif cfg.threshold_on == "calibration":
        cal_idx, eval_idx = calibration_split(scores.shape[0], cfg.calibration_fraction, cfg.seed)
        thresholds = choose_thresholds(scores[cal_idx], labels[cal_idx])
        how = "calibration"
        notes.append(f"thresholds chosen on {cal_idx.size} calibration studies, metrics on the other {eval_idx.size}")
    else:
        raise ValueError(f"threshold_on must be 'eval' or 'calibration', got {cfg.threshold_on!r}")
    s, y, c = scores[eval_idx], labels[eval_idx], centred[eval_idx]
    all_metrics = METRICS + SKILL_METRICS

    point = {m: np.full(len(names), np.nan) for m in all_metrics}
    for j in range(len(names)):
        for m, v in binary_metrics(s[:, j], y[:, j], thresholds[j]).items():
            point[m][j] = v
        if 0 < y[:, j].sum() < y.shape[0]:
            point["auprc"][j] = average_precision_score(y[:, j], s[:, j])
            point["ece"][j] = expected_calibration_error(s[:, j], y[:, j])
            point["centred_auroc"][j] = roc_auc_score(y[:, j], c[:, j])
    one_class = [names[j] for j in range(len(names)) if not 0 < y[:, j].sum() < y.shape[0]]
    if one_class:
        notes.append(f"one class only (AUROC undefined, left out of macro means): {', '.join(one_class)}")
        for m in all_metrics:
            for j, name in enumerate(names):
                if name in one_class:
                    point[m][j] = np.nan

    idx = bootstrap_indices(s.shape[0], cfg.n_boot, cfg.seed) if cfg.n_boot > 0 else np.zeros((0, s.shape[0]), int)
    draws, skipped = _draw_metrics(s, y, thresholds, idx)
    draws.update(_skill_draw_metrics(s, y, c, idx))
    macro_draws = {m: _nanmean_rows(draws[m]) for m in all_metrics}
    skipped_counts = skipped.sum(axis=0)
    partly = [j for j, k in enumerate(skipped_counts) if k and names[j] not in one_class]
    if partly:
        notes.append("bootstrap draws with no positive (or no negative) study for a finding skip that finding: "
                     + ", ".join(f"{names[j]} {int(skipped_counts[j])} of {cfg.n_boot}" for j in partly))

    macro = {}
    for m in all_metrics:
        lo, hi = _ci(macro_draws[m], cfg.level)
        v = macro_draws[m][~np.isnan(macro_draws[m])]
        macro[m] = {"value": float(np.nanmean(point[m])) if np.isfinite(point[m]).any() else float("nan"),
                    "ci": [lo, hi], "std": float(v.std(ddof=1)) if v.size > 1 else float("nan")}
    per = {}
    for j, name in enumerate(names):
        per[name] = {
            **{m: float(point[m][j]) for m in all_metrics},
            "threshold": float(thresholds[j]),
            "positives": int(y[:, j].sum()),
            "prevalence": float(y[:, j].mean()) if y.shape[0] else float("nan"),  # a random score's AUPRC
            "skipped_draws": int(skipped_counts[j]),
            "ci": {m: list(_ci(draws[m][:, j], cfg.level)) for m in all_metrics},
        }
    return {
        "macro": macro,
        "per_finding": per,
        "thresholds": {name: float(t) for name, t in zip(names, thresholds)},
        "threshold_on": how,
        "n_studies": int(s.shape[0]),
        "n_boot": int(cfg.n_boot),
        "seed": int(cfg.seed),
        "level": cfg.level,
        "labels_mode": int(cfg.labels_mode),
        "ece_bins": ECE_BINS,
        "notes": notes,
    }


def subset_macro_auroc_spread(scores: np.ndarray, labels: np.ndarray, n: int, draws: int = 1000,
                              seed: int = 0) -> dict:
    """How much macro AUROC moves when only ``n`` studies are evaluated: ``draws`` sets of ``n``
    studies drawn with replacement from ``scores [N, L]`` / ``labels [N, L]``; findings with one
    class in a draw are left out of that draw's macro mean (as in :func:`zero_shot_metrics`).

    A regression test on a fresh set of ``n`` studies then asserts ``macro AUROC >= value - 3 * std``:
    the bar a model of unchanged quality clears with ~99.9 % probability.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = (np.asarray(labels) > 0).astype(np.int64)
    idx = np.random.default_rng(seed).integers(0, scores.shape[0], size=(draws, n))
    per = np.stack([_auroc_rows(scores[idx, j], labels[idx, j]) for j in range(scores.shape[1])], axis=1)
    macro = _nanmean_rows(per)
    macro = macro[~np.isnan(macro)]
    point = [_auroc_rows(scores[None, :, j], labels[None, :, j])[0] for j in range(scores.shape[1])]
    return {"n": int(n), "draws": int(draws), "seed": int(seed), "value": float(np.nanmean(point)),
            "mean": float(macro.mean()), "std": float(macro.std(ddof=1)),
            "floor": float(np.nanmean(point) - 3 * macro.std(ddof=1))}


def paired_bootstrap_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    thresholds_a: np.ndarray,
    thresholds_b: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Macro metric of system A minus system B, with both scored on the *same* resampled studies.

    Returns ``{metric: {diff, ci: [lo, hi], p_le_0, excludes_zero}}`` where ``p_le_0`` is the
    fraction of draws with a difference ≤ 0 (a one-sided bootstrap p-value for "A beats B").
    Findings skipped in a draw are skipped for both systems.
    """
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    y = (np.asarray(labels) > 0).astype(np.int64)
    idx = bootstrap_indices(y.shape[0], n_boot, seed)
    da, _ = _draw_metrics(a, y, np.asarray(thresholds_a, np.float64), idx)
    db, _ = _draw_metrics(b, y, np.asarray(thresholds_b, np.float64), idx)
    point_a = _draw_metrics(a, y, np.asarray(thresholds_a, np.float64), np.arange(y.shape[0])[None])[0]
    point_b = _draw_metrics(b, y, np.asarray(thresholds_b, np.float64), np.arange(y.shape[0])[None])[0]
    out = {}
    with np.errstate(all="ignore"):
        for m in METRICS:
            diff = _nanmean_rows(da[m]) - _nanmean_rows(db[m])
            lo, hi = _ci(diff, level)
            d = diff[~np.isnan(diff)]
            out[m] = {
                "diff": float(_nanmean_rows(point_a[m])[0] - _nanmean_rows(point_b[m])[0]),
                "ci": [lo, hi],
                "p_le_0": float((d <= 0).mean()) if d.size else float("nan"),
                "excludes_zero": bool(lo > 0 or hi < 0),
            }
    return out


# --------------------------------------------------------------------------- ceilings


#: Linear probe: folds over studies and the ridge penalties tried (on standardised embeddings).
PROBE_FOLDS = 5
PROBE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def linear_probe_scores(embeddings: np.ndarray, labels: np.ndarray, *, folds: int = PROBE_FOLDS, seed: int = 0,
                        alphas: Sequence[float] = PROBE_ALPHAS) -> np.ndarray:
    """Out-of-fold scores ``[N, L]`` of a supervised linear read-out of ``embeddings [N, D]``.

    The studies are cut into ``folds`` folds by a seeded permutation (the same folds for every
    finding). For each fold, on the other folds only: the embeddings are standardised, and a ridge
    regression of each finding's 0/1 label (a least-squares linear classifier) is fitted with its
    penalty chosen per finding from ``alphas`` by efficient leave-one-out (``RidgeCV``); the held-out
    fold gets ``standardised x · w``. The intercept is left out of the score: it is the training
    folds' prevalence, which anti-correlates with the held-out fold's and would push pooled scores
    below chance. Even so, with no signal the pooled out-of-fold AUROC reads a little below 0.5
    (about −0.02 on random labels, a known property of cross-validated shrinkage): a conservative
    ceiling. Scores rank, they are not probabilities.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embeddings, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings {x.shape} and labels {y.shape} must be [N, D] and [N, L]")
    if not 2 <= folds <= x.shape[0]:
        raise ValueError(f"a {folds}-fold probe needs 2 to {x.shape[0]} folds")
    out = np.zeros(y.shape)
    for train, held in KFold(folds, shuffle=True, random_state=seed).split(x):
        scaler = StandardScaler().fit(x[train])
        ridge = RidgeCV(alphas=tuple(alphas), alpha_per_target=True).fit(scaler.transform(x[train]), y[train])
        out[held] = scaler.transform(x[held]) @ np.atleast_2d(ridge.coef_).T
    return out


def auroc_with_ci(scores: np.ndarray, labels: np.ndarray, names: Sequence[str], *, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95) -> dict:
    """AUROC per finding and its macro mean with bootstrap CIs (:func:`bootstrap_indices` with the
    same ``n_boot`` and ``seed`` as :func:`zero_shot_metrics`, so both see the same resampled studies).
    ``{"macro": {value, ci}, "per_finding": {name: {auroc, ci, positives}}}``."""
    s = np.asarray(scores, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.int64)
    point = _auroc_rows(s.T, y.T)
    idx = bootstrap_indices(s.shape[0], n_boot, seed) if n_boot > 0 else np.zeros((0, s.shape[0]), int)
    draws = np.stack([_auroc_rows(s[idx, j], y[idx, j]) for j in range(s.shape[1])], axis=1) if len(idx) else \
        np.zeros((0, s.shape[1]))
    finite = point[np.isfinite(point)]
    return {
        "macro": {"value": float(finite.mean()) if finite.size else float("nan"),
                  "ci": list(_ci(_nanmean_rows(draws), level))},
        "per_finding": {name: {"auroc": float(point[j]), "ci": list(_ci(draws[:, j], level)),
                               "positives": int(y[:, j].sum())} for j, name in enumerate(names)},
    }


def linear_probe(embeddings: np.ndarray, labels: np.ndarray, names: Sequence[str] = LABELS, *,
                 folds: int = PROBE_FOLDS, seed: int = 0, n_boot: int = 1000, level: float = 0.95,
                 labels_mode: int | str = 18) -> dict:
    """The encoder's ceiling: :func:`linear_probe_scores` on all ``len(names)`` findings, then (16-label
    mode: merged as :func:`select_labels` does) AUROC with CIs; ``method`` says how, in words."""
    oof = linear_probe_scores(embeddings, labels, folds=folds, seed=seed)
    oof, y, sel = select_labels(oof, labels, names, labels_mode)
    out = auroc_with_ci(oof, y, sel, n_boot=n_boot, seed=seed, level=level)
    out["method"] = (f"ridge regression of each finding's 0/1 label on the standardised CT embedding, "
                     f"{folds}-fold cross-validation over the {len(y)} evaluated studies (seeded permutation, "
                     f"seed {seed}; penalty per finding by leave-one-out inside the training folds), "
                     f"AUROC of the pooled out-of-fold scores")
    out["folds"] = int(folds)
    return out


# --------------------------------------------------------------------------- retrieval


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall_at_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Recall@k where query i's match is gallery item i (cosine similarity).

    The rank of the match counts the gallery items scoring strictly higher, so a tie is in the
    match's favour (with float embeddings ties are practically absent). Returns
    ``{"n": N, "k": {k: {"recall", "random", "ci"?}}}`` with ``random = min(k, N) / N``;
    ``n_boot > 0`` adds a bootstrap CI over queries.
    """
    q, g = _unit_rows(queries), _unit_rows(gallery)
    if q.shape != g.shape:
        raise ValueError(f"queries {q.shape} and gallery {g.shape} must be paired [N, D]")
    sim = q @ g.T
    own = np.diag(sim)
    rank = (sim > own[:, None]).sum(axis=1)  # 0 = first
    n = q.shape[0]
    idx = bootstrap_indices(n, n_boot, seed) if n_boot > 0 else None
    out = {}
    for k in ks:
        hits = (rank < k).astype(np.float64)
        entry = {"recall": float(hits.mean()), "random": min(k, n) / n}
        if idx is not None:
            entry["ci"] = list(_ci(hits[idx].mean(axis=1), level))
        out[int(k)] = entry
    return {"n": n, "k": out}


def _jaccard_matrix(labels: np.ndarray) -> np.ndarray:
    y = (np.asarray(labels) > 0).astype(np.float64)
    inter = y @ y.T
    count = y.sum(axis=1)
    union = count[:, None] + count[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def label_overlap_map_at_k(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = MAP_KS) -> dict:
    """CT→CT label-overlap MAP@k as defined in the module docstring (no self-match, fresh per k).

    Returns ``{"n_queries", "gallery": n_with_a_positive, "random", "k": {k: value}}``; a k larger
    than a query's gallery uses the whole gallery.
    """
    e = _unit_rows(embeddings)
    y = np.asarray(labels)
    n = e.shape[0]
    in_gallery = (y > 0).any(axis=1)
    jac = _jaccard_matrix(y)
    sim = e @ e.T
    allowed = in_gallery[None, :] & ~np.eye(n, dtype=bool)
    sim = np.where(allowed, sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    counts = allowed.sum(axis=1)
    valid = counts > 0
    out = {}
    for k in ks:
        values = []
        for i in np.flatnonzero(valid):
            top = order[i, : min(k, counts[i])]
            values.append(jac[i, top].mean())
        out[int(k)] = float(np.mean(values)) if values else float("nan")
    with np.errstate(invalid="ignore"):
        rand = [jac[i, allowed[i]].mean() for i in np.flatnonzero(valid)]
    return {"n_queries": int(valid.sum()), "gallery": int(in_gallery.sum()),
            "random": float(np.mean(rand)) if rand else float("nan"), "k": out}


# --------------------------------------------------------------------------- dictation head


def dictation_f1(predicted: np.ndarray, target: np.ndarray, classes: Sequence[str], names: Sequence[str]) -> dict:
    """F1 of the dictation head (mention states): per class over all (study, finding) pairs, their macro
    mean (over the states that occur in the target or the prediction), the macro-over-classes F1 of each finding, the confusion counts (``confusion[true][predicted]``)
    and the share of present mentions read as absent. ``predicted``/``target`` are class indices ``[N, L]``."""
    p, t = np.asarray(predicted).reshape(-1), np.asarray(target).reshape(-1)
    k = list(range(len(classes)))
    per_class = f1_score(t, p, labels=k, average=None, zero_division=0)
    occurring = [i for i in k if (t == i).any() or (p == i).any()]  # a state nobody said is not averaged in
    P, T = np.asarray(predicted), np.asarray(target)
    per_finding = {
        name: float(f1_score(T[:, j], P[:, j], average="macro", zero_division=0))
        for j, name in enumerate(names)
    }
    support = {c: int((t == i).sum()) for i, c in enumerate(classes)}
    confusion = {c: {d: int(((t == i) & (p == j)).sum()) for j, d in enumerate(classes)} for i, c in enumerate(classes)}
    out_extra = {"confusion": confusion}
    if "present" in classes and "absent" in classes and support["present"]:
        out_extra["present_read_absent"] = confusion["present"]["absent"] / support["present"]
    return {
        **out_extra,
        "macro_f1": float(np.mean(per_class[occurring])) if occurring else float("nan"),
        "per_class": {c: float(v) for c, v in zip(classes, per_class)},
        "support": support,
        "per_finding_macro_f1": per_finding,
        "accuracy": float((p == t).mean()),
    }


def _macro_f1_fast(t: np.ndarray, p: np.ndarray, k: int) -> float:
    """Macro F1 over the classes (of ``k``) that occur in ``t`` or ``p``, from flat integer arrays."""
    f1 = []
    for c in range(k):
        tp = np.sum((t == c) & (p == c))
        denom = np.sum(t == c) + np.sum(p == c)
        if denom:
            f1.append(2.0 * tp / denom)
    return float(np.mean(f1)) if f1 else float("nan")


def dictation_f1_paired(pred_a: np.ndarray, pred_b: np.ndarray, target: np.ndarray, n_classes: int, *,
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Macro F1 of two readers on the same studies (``[N, L]`` class indices), and the paired bootstrap
    over studies of ``a − b``: {"a", "b", "diff", "ci": [lo, hi], "n"}."""
    a, b, t = (np.asarray(x) for x in (pred_a, pred_b, target))
    n = t.shape[0]
    fa, fb = _macro_f1_fast(t.ravel(), a.ravel(), n_classes), _macro_f1_fast(t.ravel(), b.ravel(), n_classes)
    diffs = []
    for idx in bootstrap_indices(n, n_boot, seed):
        tt = t[idx].ravel()
        diffs.append(_macro_f1_fast(tt, a[idx].ravel(), n_classes) - _macro_f1_fast(tt, b[idx].ravel(), n_classes))
    lo, hi = _ci(np.asarray(diffs), level) if diffs else (float("nan"), float("nan"))
    return {"a": fa, "b": fb, "diff": fa - fb, "ci": [lo, hi], "n": int(n)}


def report_zero_shot_auroc(query_emb: np.ndarray, present: np.ndarray, absent: np.ndarray, logit_scale: float,
                           labels: np.ndarray, names: Sequence[str] = LABELS) -> dict:
    """How well a *report* embedding (speech or text) carries its findings: the zero-shot protocol
    applied to the report instead of the CT; per-finding and macro AUROC against ``labels``
    (rank form, equal to ``roc_auc_score``; NaN for a finding with one class)."""
    scores = zero_shot_probabilities(np.asarray(query_emb, np.float32), present, absent, logit_scale)
    y = (np.asarray(labels) > 0).astype(np.int64)
    aucs = _auroc_rows(np.asarray(scores, np.float64).T, y.T)
    per = {name: float(a) for name, a in zip(names, aucs)}
    vals = aucs[np.isfinite(aucs)]
    return {"macro_auroc": float(vals.mean()) if vals.size else float("nan"), "per_finding": per}


def _shown_discrepancies(image_positive: np.ndarray, said: np.ndarray, names: Sequence[str],
                         checked: np.ndarray) -> list[set[str]]:
    """Per study, the findings :func:`engine.findings.discrepancies` would show (the product's rule)."""
    from engine.findings import DictationFinding, FindingScore, discrepancies
    from engine.labels import DICTATION_CLASSES

    out = []
    for pos, states in zip(np.asarray(image_positive, bool), np.asarray(said)):
        findings = [FindingScore(n, float(p), 0.5, bool(p)) for n, p, c in zip(names, pos, checked) if c]
        dictation = [DictationFinding(n, DICTATION_CLASSES[int(s)], 1.0, {}) for n, s in zip(names, states)]
        out.append({d.label for d in discrepancies(findings, dictation)})
    return out


def discrepancy_measures(predicted: np.ndarray, mentions: np.ndarray, labels: np.ndarray, names: Sequence[str],
                         image_positive: np.ndarray | None = None, checked: np.ndarray | None = None) -> dict:
    """How the dictation check would serve a radiologist, from a reader's mention states ``predicted``
    ``[N, L]`` (class indices into :data:`engine.findings.DICTATION_CLASSES`), the dictated states
    ``mentions`` and the image truth ``labels``.

    A *true* discrepancy is one the product's rule finds between the truth and what was really dictated
    (in synthetic test sets: the planted slips, ``train.synth.ctrate.PLANTED_CSV``).

    - ``false_alarm_studies``: with the image side replaced by the truth, the share of studies showing a
      discrepancy that is not true (the reader's own errors);
    - with ``image_positive`` (the image model's thresholded calls) and ``checked`` (findings that pass the
      reliability gate): ``precision`` (shown discrepancies that are true) and ``recall`` (true ones
      shown), matched by study and finding.
    """
    labels = np.asarray(labels).astype(bool)
    all_checked = np.ones(len(names), bool)
    truth = _shown_discrepancies(labels, mentions, names, all_checked)
    read = _shown_discrepancies(labels, predicted, names, all_checked)
    false = [r - t for r, t in zip(read, truth)]
    out: dict[str, Any] = {
        "n_studies": int(len(labels)),
        "true_discrepancies": int(sum(len(t) for t in truth)),
        "studies_with_true_discrepancy": float(np.mean([bool(t) for t in truth])) if truth else float("nan"),
        "false_alarm_studies": float(np.mean([bool(f) for f in false])) if false else float("nan"),
        "false_alarms": int(sum(len(f) for f in false)),
    }
    if image_positive is not None:
        gate = all_checked if checked is None else np.asarray(checked, bool)
        shown = _shown_discrepancies(image_positive, predicted, names, gate)
        hits = sum(len(s & t) for s, t in zip(shown, truth))
        n_shown, n_true = sum(len(s) for s in shown), sum(len(t) for t in truth)
        out.update({"shown": int(n_shown), "true_shown": int(hits),
                    "precision": hits / n_shown if n_shown else float("nan"),
                    "recall": hits / n_true if n_true else float("nan"),
                    "checked_findings": [n for n, c in zip(names, gate) if c]})
    return out
