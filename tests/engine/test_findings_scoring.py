"""engine.findings: zero-shot probabilities (CT-CLIP's protocol), prompt banks, ranking,
dictation findings and discrepancies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.findings import (
    DictationFinding,
    FindingScore,
    PromptBank,
    average_prompt_voices,
    dictation_findings,
    discrepancies,
    rank_findings,
    zero_shot_probabilities,
)
from engine.labels import DICTATION_CLASSES, LABELS, prompt_pair

torch.set_num_threads(1)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_probability_is_softmax_of_scaled_cosines_by_hand():
    img = np.array([[3.0, 4.0]])  # unit (.6, .8)
    present = np.array([[1.0, 0.0]])  # cos .6
    absent = np.array([[0.0, 5.0]])  # cos .8 (length must not matter)
    scale = math.e
    p = zero_shot_probabilities(img, present, absent, scale)
    expected = math.exp(scale * 0.6) / (math.exp(scale * 0.6) + math.exp(scale * 0.8))
    assert isinstance(p, np.ndarray) and p.shape == (1, 1)
    assert p[0, 0] == pytest.approx(expected, abs=1e-6)


def test_matches_ctclip_per_pair_softmax_loop_numpy_and_torch():
    rng = np.random.default_rng(0)
    img, pres, absn = rng.normal(size=(7, 16)), rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    scale = 12.5
    ref = np.zeros((7, 5))
    for i in range(7):  # CT-CLIP: for each finding, model(pair of texts, image) -> softmax(dim=0)[0]
        for j in range(5):
            s = np.array([scale * _unit(img[i]) @ _unit(pres[j]), scale * _unit(img[i]) @ _unit(absn[j])])
            e = np.exp(s - s.max())
            ref[i, j] = e[0] / e.sum()
    np.testing.assert_allclose(zero_shot_probabilities(img, pres, absn, scale), ref, atol=1e-5)
    t = zero_shot_probabilities(torch.tensor(img), torch.tensor(pres), torch.tensor(absn), torch.tensor(scale))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-5)
    one = zero_shot_probabilities(img[0], pres, absn, scale)  # a single [D] embedding
    np.testing.assert_allclose(one[0], ref[0], atol=1e-5)


def test_spoken_prompts_average_normalised_voices():
    rng = np.random.default_rng(1)
    voices = rng.normal(size=(3, 4, 8)) * rng.uniform(0.1, 10, size=(3, 4, 1))  # lengths differ per voice
    avg = average_prompt_voices(voices).numpy()
    expected = np.stack([np.mean([_unit(v) for v in voices[k]], axis=0) for k in range(3)])
    np.testing.assert_allclose(avg, expected, atol=1e-6)
    img = rng.normal(size=(2, 8))
    absent = rng.normal(size=(3, 4, 8))
    np.testing.assert_allclose(
        zero_shot_probabilities(img, voices, absent, 3.0),
        zero_shot_probabilities(img, expected, average_prompt_voices(absent), 3.0),
        atol=1e-6,
    )


def test_prompt_bank_from_rows_roundtrip_and_voice_rows():
    rng = np.random.default_rng(2)
    labels = LABELS[:3]
    texts = [t for lab in labels for t in prompt_pair(lab)]
    emb = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    bank = PromptBank.from_rows(texts[::-1], emb.flip(0), labels)  # order of rows does not matter
    back_texts, back = bank.to_rows()
    assert back_texts == texts
    torch.testing.assert_close(back, emb)
    # two voices per prompt: rows repeated, averaged as unit vectors
    emb2 = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    spoken = PromptBank.from_rows(texts + texts, torch.cat([emb, emb2]), labels, kind="spoken")
    want = (emb / emb.norm(dim=1, keepdim=True) + emb2 / emb2.norm(dim=1, keepdim=True)) / 2
    torch.testing.assert_close(spoken.to_rows()[1], want)
    with pytest.raises(ValueError, match="missing"):
        PromptBank.from_rows(texts[:-1], emb[:-1], labels)
    with pytest.raises(ValueError, match="not a zero-shot prompt"):
        PromptBank.from_rows(["Cats are present."], emb[:1], labels)


def _bank_with_known_probs(probs, scale=10.0):
    """A 2-d bank where a CT at (1, 0) gets exactly ``probs`` (rotating each prompt pair)."""
    present, absent = [], []
    for p in probs:
        # P = sigmoid(scale·(cos_p − cos_a)); put absent at angle 90° (cos 0), solve cos_p.
        c = math.log(p / (1 - p)) / scale
        present.append([c, math.sqrt(1 - c * c)])
        absent.append([0.0, 1.0])
    return PromptBank(LABELS[: len(probs)], torch.tensor(present), torch.tensor(absent))


def test_rank_findings_sorted_with_thresholds():
    probs = [0.2, 0.9, 0.55, 0.7]
    bank = _bank_with_known_probs(probs)
    ranked = rank_findings(torch.tensor([1.0, 0.0]), bank, 10.0, {LABELS[2]: 0.6, LABELS[3]: 0.7})
    assert [r.label for r in ranked] == [LABELS[1], LABELS[3], LABELS[2], LABELS[0]]
    by = {r.label: r for r in ranked}
    assert by[LABELS[1]].probability == pytest.approx(0.9, abs=1e-5)
    assert by[LABELS[1]].threshold == 0.5 and by[LABELS[1]].positive
    assert by[LABELS[2]].threshold == 0.6 and not by[LABELS[2]].positive
    assert by[LABELS[3]].threshold == 0.7
    assert not by[LABELS[0]].positive
    seq = rank_findings(np.array([[1.0, 0.0]]), bank, 10.0, [0.1, 0.95, 0.5, 0.5])
    assert {r.label: r.positive for r in seq} == {LABELS[0]: True, LABELS[1]: False, LABELS[2]: True,
                                                   LABELS[3]: True}
    with pytest.raises(ValueError):
        rank_findings(np.array([1.0, 0.0]), bank, 10.0, [0.5])


def test_dictation_findings_four_states():
    assert DICTATION_CLASSES == ("present", "uncertain", "absent", "not mentioned")
    logits = torch.full((len(LABELS), 4), -5.0)
    logits[0, 0] = 5.0  # present
    logits[1, 1] = 2.0  # uncertain
    logits[2, 2] = 2.0  # absent
    logits[3:, 3] = 1.0  # not mentioned
    out = dictation_findings(logits)
    assert [d.label for d in out] == list(LABELS)
    assert [o.status for o in out[:4]] == ["present", "uncertain", "absent", "not mentioned"]
    assert out[0].confidence == pytest.approx(math.exp(5) / (math.exp(5) + 3 * math.exp(-5)), rel=1e-5)
    assert sum(out[1].probabilities.values()) == pytest.approx(1.0)
    assert tuple(out[0].probabilities) == DICTATION_CLASSES
    with pytest.raises(ValueError):
        dictation_findings(torch.zeros(3, 4))


def test_dictation_findings_legacy_three_states():
    from engine.labels import LEGACY_DICTATION_CLASSES

    logits = torch.full((len(LABELS), 3), -5.0)
    logits[:, 1] = 5.0
    out = dictation_findings(logits, classes=LEGACY_DICTATION_CLASSES)
    assert {o.status for o in out} == {"absent"} and tuple(out[0].probabilities) == LEGACY_DICTATION_CLASSES


def test_uncertain_mention_is_never_a_discrepancy():
    f = [FindingScore("A", 0.9, 0.5, True), FindingScore("B", 0.1, 0.5, False)]
    said = [DictationFinding("A", "uncertain", 0.9, {}), DictationFinding("B", "uncertain", 0.9, {})]
    assert discrepancies(f, said) == []


def test_discrepancies_kinds_and_order():
    f = [
        FindingScore("A", 0.9, 0.5, True),  # image yes, dictation absent -> negated
        FindingScore("B", 0.8, 0.5, True),  # image yes, silent -> omitted
        FindingScore("C", 0.2, 0.5, False),  # dictated present, image no -> unsupported
        FindingScore("D", 0.7, 0.5, True),  # agree: present
        FindingScore("E", 0.1, 0.5, False),  # agree: absent
        FindingScore("F", 0.6, 0.5, True),  # omitted, smaller margin than B
        FindingScore("G", 0.95, 0.5, True),  # negated but unsure dictation
    ]

    def d(label, status, conf=0.9):
        return DictationFinding(label, status, conf, {})

    dic = [d("A", "absent"), d("B", "not mentioned"), d("C", "present"), d("D", "present"),
           d("E", "absent"), d("F", "not mentioned"), d("G", "absent", 0.4)]
    out = discrepancies(f, dic)
    assert [(x.label, x.kind) for x in out] == [("G", "negated"), ("A", "negated"), ("B", "omitted"),
                                                ("F", "omitted"), ("C", "unsupported")]
    assert out[1].margin == pytest.approx(0.4) and out[1].dictation_confidence == 0.9
    sure = discrepancies(f, dic, min_dictation_confidence=0.5)
    assert "G" not in [x.label for x in sure]


def test_weak_findings_are_carried_and_left_unchecked():
    from engine.findings import (
        DictationFinding,
        FindingScore,
        discrepancies,
        unchecked,
    )

    findings = [FindingScore("Emphysema", 0.9, 0.5, True, 0.95), FindingScore("Atelectasis", 0.8, 0.5, True, 0.55),
                FindingScore("Consolidation", 0.7, 0.5, True, None)]
    probs = {"present": 0.05, "absent": 0.9, "not mentioned": 0.05}
    said = [DictationFinding(f.label, "absent", 0.9, probs) for f in findings]
    assert unchecked(findings, 0.75) == ["Atelectasis"]  # unknown AUROC (None) is checked
    assert [d.label for d in discrepancies(findings, said, min_auroc=0.75)] == ["Emphysema", "Consolidation"]
    assert len(discrepancies(findings, said)) == 3


def _bundle_with_gate(folder, thresholds_update: dict):
    import json

    from tests.engine.tiny_bundle import write_tiny_bundle

    path = write_tiny_bundle(folder)
    manifest = json.loads((path / "bundle.json").read_text())
    manifest["thresholds"].update(thresholds_update)
    (path / "bundle.json").write_text(json.dumps(manifest))
    return path


def test_gate_reads_the_lower_ci_bound_of_a_bundle(tmp_path):
    """A bundle exported now carries each finding's lower CI bound in ``thresholds.auroc``: Lung nodule's
    point estimate (0.82) clears the 0.75 bar, its lower bound (0.70) does not, so the engine leaves it
    unchecked; ``bundle-info`` says which statistic the bundle carries."""
    from engine.commands.bundle_info import bundle_summary, format_summary
    from engine.findings import RELIABLE_AUROC
    from engine.runtime import Engine
    from engine.weights.bundle import load_bundle
    from engine.weights.manifest import auroc_statistic
    from tests.engine.tiny_bundle import embedding

    point = {label: 0.9 for label in LABELS}
    point["Lung nodule"] = 0.82
    lower = {label: 0.85 for label in LABELS}
    lower["Lung nodule"] = 0.70
    path = _bundle_with_gate(tmp_path / "new", {"auroc": lower, "auroc_statistic": "ci_lower", "auroc_point": point,
                                                "auroc_ci": {"level": 0.95, "n_boot": 1000, "seed": 0}})
    engine = Engine(path, cache_dir=tmp_path / "cache", device="cpu")
    ct = embedding(present=("Lung nodule", "Emphysema"))
    speech = embedding(absent=("Lung nodule", "Emphysema"))
    by = {f.label: f for f in engine.rank(ct)}
    assert by["Lung nodule"].auroc == 0.70 and by["Lung nodule"].positive and point["Lung nodule"] >= RELIABLE_AUROC
    assert [(d.kind, d.label) for d in engine.discrepancies(ct, speech)] == [("negated", "Emphysema")]
    bundle = load_bundle(path)
    assert auroc_statistic(bundle.manifest.raw["thresholds"]) == "ci_lower" == bundle.manifest.auroc_statistic
    summary = bundle_summary(bundle)
    assert summary["thresholds"]["auroc"] == {"statistic": "ci_lower", "describes": "lower bound of the bootstrap CI",
                                              "level": 0.95, "n_boot": 1000}
    assert "lower bound of its 95 % bootstrap CI, 1000 draws" in format_summary(summary)

    old = load_bundle(_bundle_with_gate(tmp_path / "old", {}))  # point estimates only, no statistic named
    assert auroc_statistic(old.manifest.raw["thresholds"]) == "point" == old.manifest.auroc_statistic
    old_summary = bundle_summary(old)
    assert old_summary["thresholds"]["auroc"]["statistic"] == "point"
    assert "as the point estimate" in format_summary(old_summary)
    with pytest.raises(ValueError, match="auroc_statistic"):
        auroc_statistic({"auroc": {"Emphysema": 0.8}, "auroc_statistic": "median"})
    assert auroc_statistic({"values": {}}) is None
