"""train.metrics: thresholds, the vectorised bootstrap against scikit-learn, CIs, skipped draws,
calibration split, 16-label mode, paired differences, retrieval and the dictation head's F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, roc_auc_score

from engine.labels import DICTATION_CLASSES, LABELS
from train import metrics as M
from train.rad_chestct import rad_chestct_labels, to_rad_chestct


def _data(n=60, L=4, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, L)) < 0.3).astype(int)
    y[0], y[1] = 1, 0  # every finding has both classes
    s = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, L)))))
    return s, y


def test_vectorised_draw_metrics_equal_sklearn_per_draw():
    s, y = _data(n=40, L=3, seed=1)
    s = np.round(s, 2)  # force ties in scores
    thr = np.array([0.3, 0.5, 0.77])
    idx = M.bootstrap_indices(40, 20, seed=3)
    draws, skipped = M._draw_metrics(s, y, thr, idx)
    for b in range(idx.shape[0]):
        for j in range(3):
            yy, ss = y[idx[b], j], s[idx[b], j]
            if yy.sum() in (0, yy.size):
                assert skipped[b, j] and np.isnan(draws["auroc"][b, j])
                continue
            pred = (ss > thr[j]).astype(int)
            assert draws["auroc"][b, j] == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
            assert draws["f1"][b, j] == pytest.approx(f1_score(yy, pred, average="weighted", zero_division=0))
            assert draws["accuracy"][b, j] == pytest.approx(accuracy_score(yy, pred))
            assert draws["precision"][b, j] == pytest.approx(precision_score(yy, pred, zero_division=0))


def test_threshold_rows_all_predicted_one_class():
    y = np.array([[1, 0, 0, 1]])
    for thr, expect_prec in ((1.0, 0.0), (-0.1, 0.5)):  # nothing predicted positive / everything positive
        s = np.array([[0.2, 0.4, 0.6, 0.8]])
        pred = (s[0] > thr).astype(int)
        got = M._threshold_rows(s, y, thr)
        assert got["precision"][0] == pytest.approx(expect_prec)
        assert got["f1"][0] == pytest.approx(f1_score(y[0], pred, average="weighted", zero_division=0))


def test_roc_corner_threshold_brute_force_and_errors():
    s, y = _data(n=50, L=1, seed=2)
    t = M.roc_corner_threshold(s[:, 0], y[:, 0])
    best, best_d = None, np.inf
    for g in np.linspace(0, 1, 100):
        p = s[:, 0] > g
        tpr = (p & (y[:, 0] == 1)).sum() / y[:, 0].sum()
        fpr = (p & (y[:, 0] == 0)).sum() / (y[:, 0] == 0).sum()
        d = np.hypot(1 - tpr, fpr)
        if d <= best_d:
            best, best_d = g, d
    assert t == best
    with pytest.raises(ValueError):
        M.roc_corner_threshold(np.array([0.1, 0.2]), np.array([1, 1]))


def test_zero_shot_metrics_shape_ci_and_seed():
    s, y = _data(n=80, L=4, seed=4)
    names = LABELS[:4]
    cfg = M.ZeroShotConfig(n_boot=200, seed=7)
    out = M.zero_shot_metrics(s, y, names, cfg)
    assert out["n_studies"] == 80 and out["threshold_on"] == "eval"
    for m in M.METRICS:
        lo, hi = out["macro"][m]["ci"]
        assert lo < hi and out["macro"][m]["std"] > 0
        assert np.isfinite(out["macro"][m]["value"])
    per = out["per_finding"][names[0]]
    assert per["auroc"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert per["threshold"] == M.roc_corner_threshold(s[:, 0], y[:, 0])
    assert out["macro"]["auroc"]["value"] == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(4)]))
    again = M.zero_shot_metrics(s, y, names, cfg)
    assert again["macro"]["auroc"]["ci"] == out["macro"]["auroc"]["ci"]
    other = M.zero_shot_metrics(s, y, names, M.ZeroShotConfig(n_boot=200, seed=8))
    assert other["macro"]["auroc"]["ci"] != out["macro"]["auroc"]["ci"]


def test_rare_finding_skips_draws_and_says_so():
    s, y = _data(n=30, L=2, seed=5)
    y[:, 1] = 0
    y[3, 1] = 1  # one positive study: many draws miss it
    out = M.zero_shot_metrics(s, y, LABELS[:2], M.ZeroShotConfig(n_boot=300, seed=0))
    skipped = out["per_finding"][LABELS[1]]["skipped_draws"]
    # P(draw misses the single positive) = (29/30)^30 ≈ 0.36
    assert 60 < skipped < 160
    assert out["per_finding"][LABELS[0]]["skipped_draws"] == 0
    assert any("skip" in note and LABELS[1] in note for note in out["notes"])


def test_calibration_split_disjoint_and_used():
    cal, ev = M.calibration_split(100, 0.3, seed=1)
    assert cal.size == 30 and ev.size == 70 and not set(cal) & set(ev)
    s, y = _data(n=100, L=3, seed=6)
    out = M.zero_shot_metrics(s, y, LABELS[:3], M.ZeroShotConfig(n_boot=50, threshold_on="calibration",
                                                                   calibration_fraction=0.3, seed=1))
    assert out["n_studies"] == 70 and out["threshold_on"] == "calibration"
    assert out["thresholds"][LABELS[0]] == M.roc_corner_threshold(s[cal, 0], y[cal, 0])
    given = M.zero_shot_metrics(s, y, LABELS[:3], M.ZeroShotConfig(n_boot=0), thresholds=np.full(3, 0.5))
    assert given["threshold_on"] == "given" and given["thresholds"][LABELS[2]] == 0.5


def test_sixteen_label_mode():
    s, y = _data(n=60, L=18, seed=9)
    out = M.zero_shot_metrics(s, y, LABELS, M.ZeroShotConfig(n_boot=20, labels_mode=16))
    assert len(out["per_finding"]) == 16 and "Calcification" in out["per_finding"]
    merged_s, merged_y = np.maximum(s[:, 1], s[:, 4]), np.maximum(y[:, 1], y[:, 4])
    assert out["per_finding"]["Calcification"]["auroc"] == pytest.approx(roc_auc_score(merged_y, merged_s))
    with pytest.raises(ValueError):
        M.zero_shot_metrics(s, y, LABELS, M.ZeroShotConfig(labels_mode=17))


def test_paired_bootstrap_detects_a_better_system():
    rng = np.random.default_rng(10)
    y = (rng.random((150, 5)) < 0.4).astype(int)
    good = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(size=y.shape))))
    bad = 1 / (1 + np.exp(-(0.3 * (2 * y - 1) + rng.normal(size=y.shape))))
    tg, tb = M.choose_thresholds(good, y), M.choose_thresholds(bad, y)
    d = M.paired_bootstrap_difference(good, bad, y, tg, tb, n_boot=300, seed=0)
    assert d["auroc"]["diff"] > 0.2 and d["auroc"]["excludes_zero"] and d["auroc"]["p_le_0"] == 0.0
    same = M.paired_bootstrap_difference(good, good, y, tg, tg, n_boot=100, seed=0)
    assert same["auroc"]["diff"] == 0 and same["auroc"]["ci"] == [0.0, 0.0] and not same["auroc"]["excludes_zero"]


def test_recall_at_k_and_random_baseline():
    rng = np.random.default_rng(11)
    g = rng.normal(size=(20, 8))
    out = M.recall_at_k(g + 1e-3 * rng.normal(size=g.shape), g, ks=(1, 5, 50))
    assert out["n"] == 20 and out["k"][1]["recall"] == 1.0
    assert out["k"][5]["random"] == 5 / 20 and out["k"][50]["random"] == 1.0
    # query i's match placed at a known rank: gallery = queries rolled, so match is found by hand
    q = rng.normal(size=(30, 8))
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g2 := rng.normal(size=(30, 8))).T
    ranks = (sim / np.linalg.norm(g2, axis=1) > np.diag(sim / np.linalg.norm(g2, axis=1))[:, None]).sum(1)
    res = M.recall_at_k(q, g2, ks=(1, 5, 10), n_boot=100)
    for k in (1, 5, 10):
        assert res["k"][k]["recall"] == pytest.approx((ranks < k).mean())
        lo, hi = res["k"][k]["ci"]
        assert lo <= res["k"][k]["recall"] <= hi


def test_label_overlap_map_no_self_fresh_per_k():
    # 4 volumes: 0 and 1 identical labels and embeddings; 3 has no positive (not in the gallery).
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    out = M.label_overlap_map_at_k(emb, labels, ks=(1, 2))
    assert out["gallery"] == 3 and out["n_queries"] == 4
    # k=1: 0->1 (J=1), 1->0 (J=1), 2->nearest other in gallery: 0 or 1 (J=0), 3->0 (J=0)
    assert out["k"][1] == pytest.approx(0.5)
    # k=2: 0->{1, 2}: (1+0)/2; 1->{0, 2}: .5; 2->{0,1}: 0; 3->{0,1}: 0  => mean 0.25 (not mixed with k=1)
    assert out["k"][2] == pytest.approx(0.25)
    # CT-CLIP's self-retrieval would have given query 2 a perfect match at k=1
    assert out["random"] == pytest.approx(np.mean([0.5, 0.5, 0.0, 0.0]))


def test_dictation_f1():
    t = np.array([[0, 2, 3], [3, 3, 2], [0, 3, 1], [0, 1, 3]])
    p = np.array([[0, 2, 3], [3, 2, 2], [2, 3, 1], [0, 3, 3]])
    out = M.dictation_f1(p, t, DICTATION_CLASSES, LABELS[:3])
    ref = f1_score(t.ravel(), p.ravel(), labels=[0, 1, 2, 3], average=None)
    assert out["per_class"]["present"] == pytest.approx(ref[0])
    assert out["macro_f1"] == pytest.approx(ref.mean())
    assert out["support"] == {"present": 3, "uncertain": 2, "absent": 2, "not mentioned": 5}
    assert out["confusion"]["present"] == {"present": 2, "uncertain": 0, "absent": 1, "not mentioned": 0}
    assert out["present_read_absent"] == pytest.approx(1 / 3)
    assert set(out["per_finding_macro_f1"]) == set(LABELS[:3])


def test_report_zero_shot_auroc_equals_sklearn():
    rng = np.random.default_rng(12)
    y = (rng.random((40, 3)) < 0.4).astype(int)
    y[0], y[1] = 1, 0
    present, absent = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    q = (2 * y - 1) @ (present - absent) + rng.normal(size=(40, 6))
    out = M.report_zero_shot_auroc(q, present, absent, 5.0, y, LABELS[:3])
    scores = M.zero_shot_probabilities(q.astype(np.float32), present, absent, 5.0)
    for j in range(3):
        assert out["per_finding"][LABELS[j]] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]))
    assert out["macro_auroc"] > 0.6


# --------------------------------------------------------------------------- finding-specific skill


def test_average_precision_rows_equal_sklearn_with_ties():
    s, y = _data(n=40, L=1, seed=13)
    s = np.round(s[:, 0], 1)  # heavy ties: a threshold admits a whole tie group at once
    idx = M.bootstrap_indices(40, 30, seed=2)
    got = M._average_precision_rows(s[idx], y[idx, 0])
    for b in range(idx.shape[0]):
        yy = y[idx[b], 0]
        if yy.sum() == 0:
            assert np.isnan(got[b])
        else:
            assert got[b] == pytest.approx(average_precision_score(yy, s[idx[b]]), abs=1e-12)


def test_ece_by_hand():
    # 10 equal-width bins; p = 1.0 falls in the last (closed) bin
    p = np.array([0.05, 0.08, 0.15, 0.42, 0.48, 0.45, 0.93, 1.0, 0.97, 0.61])
    y = np.array([0, 1, 0, 1, 0, 0, 1, 1, 0, 1])
    # bins: [0,.1): .05 .08 (y 0 1); [.1,.2): .15 (0); [.4,.5): .42 .48 .45 (1 0 0); [.6,.7): .61 (1);
    #       [.9,1]: .93 1.0 .97 (1 1 0)
    by_hand = (2 * abs(0.5 - 0.065) + 1 * abs(0 - 0.15) + 3 * abs(1 / 3 - 0.45) + 1 * abs(1 - 0.61)
               + 3 * abs(2 / 3 - (0.93 + 1.0 + 0.97) / 3)) / 10
    assert M.expected_calibration_error(p, y) == pytest.approx(by_hand, abs=1e-12)
    assert M.expected_calibration_error(np.full(8, 0.25), np.array([1, 0, 0, 0] * 2)) == pytest.approx(0.0)
    assert M.expected_calibration_error(np.full(4, 0.9), np.zeros(4)) == pytest.approx(0.9)
    rows = M._ece_rows(np.stack([p, p[::-1], np.full(10, 0.9)]), np.stack([y, y[::-1], np.zeros(10)]))
    np.testing.assert_allclose(rows, [by_hand, by_hand, 0.9])  # rows of bootstrap draws kept apart


def test_zero_shot_metrics_skill_equals_sklearn_and_hand():
    s, y = _data(n=70, L=3, seed=14)
    logits = M.logits_from_probabilities(s)
    out = M.zero_shot_metrics(s, y, LABELS[:3], M.ZeroShotConfig(n_boot=100, seed=1), logits=logits)
    centred = logits - logits.mean(axis=1, keepdims=True)
    for j, name in enumerate(LABELS[:3]):
        per = out["per_finding"][name]
        assert per["auprc"] == pytest.approx(average_precision_score(y[:, j], s[:, j]))
        assert per["prevalence"] == pytest.approx(y[:, j].mean())
        assert per["ece"] == pytest.approx(M.expected_calibration_error(s[:, j], y[:, j]))
        assert per["centred_auroc"] == pytest.approx(roc_auc_score(y[:, j], centred[:, j]))
        for m in M.SKILL_METRICS:
            lo, hi = per["ci"][m]
            assert lo <= per[m] <= hi or m == "ece"  # ECE is biased upward under resampling
    assert out["macro"]["auprc"]["value"] == pytest.approx(np.mean([average_precision_score(y[:, j], s[:, j])
                                                                     for j in range(3)]))
    assert out["ece_bins"] == 10


def _shared_axis_world(specific: float, n=400, L=18, seed=15):
    """Labels driven by a per-study severity (findings co-occur); logits = severity (shared by every
    finding) + ``specific`` × each finding's own label + noise."""
    rng = np.random.default_rng(seed)
    severity = rng.normal(size=(n, 1))
    y = (rng.random((n, L)) < 1 / (1 + np.exp(-(2.5 * severity - 1.0)))).astype(int)
    logits = 3.0 * severity + specific * (2 * y - 1) + 0.5 * rng.normal(size=(n, L))
    return logits, y


def test_centred_auroc_removes_the_shared_axis():
    logits, y = _shared_axis_world(specific=0.0)
    s = 1 / (1 + np.exp(-logits))
    out = M.zero_shot_metrics(s, y, LABELS, M.ZeroShotConfig(n_boot=50), logits=logits)
    assert out["macro"]["auroc"]["value"] > 0.8  # the severity axis alone looks like skill
    assert abs(out["macro"]["centred_auroc"]["value"] - 0.5) < 0.06  # no finding-specific signal
    logits, y = _shared_axis_world(specific=1.0)
    out = M.zero_shot_metrics(1 / (1 + np.exp(-logits)), y, LABELS, M.ZeroShotConfig(n_boot=50), logits=logits)
    assert out["macro"]["centred_auroc"]["value"] > 0.8  # real finding-specific signal survives


def test_pair_logits_are_the_zero_shot_probabilities_logits():
    rng = np.random.default_rng(16)
    x, present, absent = rng.normal(size=(12, 6)), rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    logits = M.pair_logits(x, present, absent, 7.0)
    p = M.zero_shot_probabilities(x.astype(np.float32), present, absent, 7.0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), p, atol=1e-5)
    big = M.pair_logits(x, present, absent, 500.0)  # float32 P saturates; the logits do not
    assert np.isfinite(big).all() and np.abs(big).max() > 40


def test_linear_probe_is_cross_validated():
    rng = np.random.default_rng(17)
    n, d = 150, 200  # more dimensions than training studies: an in-sample fit would score 1.0
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(16, 4))  # each finding is a direction in a 16-dimensional embedding
    y = ((x[:, :16] @ w) / 4 + 0.3 * rng.normal(size=(n, 4)) > 0.5).astype(int)
    out = M.linear_probe(x[:, :16], y, LABELS[:4], folds=5, n_boot=100)
    assert out["macro"]["value"] > 0.85 and "5-fold" in out["method"]
    for name in LABELS[:4]:
        lo, hi = out["per_finding"][name]["ci"]
        assert lo < out["per_finding"][name]["auroc"] < hi
    noise = (rng.random((n, 18)) < 0.3).astype(int)
    chance = M.linear_probe(x, noise, LABELS, folds=5, n_boot=0)
    assert abs(chance["macro"]["value"] - 0.5) < 0.06  # nothing to learn, nothing leaked
    oof = M.linear_probe_scores(x[:, :16], y, folds=5, seed=0)
    assert M.auroc_with_ci(oof, y, LABELS[:4], n_boot=0)["per_finding"][LABELS[0]]["auroc"] == pytest.approx(
        roc_auc_score(y[:, 0], oof[:, 0]))


def test_rad_chestct_sixteen():
    names = rad_chestct_labels()
    assert len(names) == 16 and names[1] == "Calcification"
    assert "Mosaic attenuation pattern" not in names and "Coronary artery wall calcification" not in names
    x = np.arange(18 * 2, dtype=float).reshape(2, 18)
    x[0, 4] = 100.0  # coronary larger than arterial in row 0
    y = to_rad_chestct(x)
    assert y.shape == (2, 16)
    assert y[0, 1] == 100.0 and y[1, 1] == x[1, 4]
    assert y[0, 0] == x[0, 0] and y[0, 2] == x[0, 2] and y[0, 3] == x[0, 3] and y[0, 4] == x[0, 5]
    assert list(y[0, 12:]) == list(x[0, 14:])  # mosaic (13) gone
    torch.testing.assert_close(to_rad_chestct(torch.tensor(x)), torch.tensor(y))


def test_the_training_monitor_reads_the_one_recall_at_k():
    from train.recipes import recall_at_k as monitor

    g = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    q = g + 0.5 * torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    want = M.recall_at_k(q.numpy(), g.numpy(), ks=(1, 5, 10))["k"]
    assert monitor(q, g, ks=(1, 5, 10, 50)) == {f"R@{k}": want[k]["recall"] for k in (1, 5, 10)}
