"""CI regression test of the committed default bundle on phantoms it has never seen.

``speechct-train evaluate`` stores, in the bundle's ``evaluation.regression_reference``, the text
teacher's macro AUROC on the validation split and its spread over random sets of ``n`` studies
(:func:`train.metrics.subset_macro_auroc_spread`). Here ``n`` fresh studies are drawn from the
same generator with a seed no training or validation study used, scored through the product path
(``engine.Engine``: preprocessing, the bundle's CT encoder, its stored prompts and logit scale), and
the macro AUROC must clear ``value - 3 * std``. A bundle that lost its skill, a preprocessing change
that shifts the encoder's input, or a broken prompt bank fails it.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from engine.labels import LABELS
from engine.runtime import Engine, default_bundle_path
from train.synth.ctrate import plan_dataset
from train.synth.phantom import make_phantom

#: not a seed of the bundle's data (make_bundle uses 0; samples and tests use small seeds)
FRESH_SEED = 20261129


def _reference() -> dict:
    manifest = json.loads((default_bundle_path() / "bundle.json").read_text())
    ref = manifest.get("evaluation", {}).get("regression_reference")
    assert ref, "the committed default bundle has no evaluation.regression_reference (re-run evaluate + export)"
    return ref


def _render(plan):
    kernel = "standard" if plan.recon == 1 else "sharp"
    p = make_phantom(plan.seed, plan.labels, size="default", sex=plan.sex, age=plan.age, kernel=kernel,
                     recon=plan.recon - 1)
    return p.volume, np.array([int(p.labels[lab]) for lab in LABELS])


def _auroc_macro(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(labels[:, j], scores[:, j]) for j in range(labels.shape[1])
            if 0 < labels[:, j].sum() < labels.shape[0]]
    return float(np.mean(aucs)), len(aucs)


def test_default_bundle_keeps_its_zero_shot_auroc_on_fresh_phantoms(tmp_path):
    ref = _reference()
    n = int(ref["n"])
    plans = [p for p in plan_dataset(0, n, FRESH_SEED) if p.split == "valid"][:n]
    assert len(plans) == n
    with ProcessPoolExecutor(max_workers=2) as pool:
        studies = list(pool.map(_render, plans))
    engine = Engine(device="cpu", cache_dir=False)
    scores = np.array([[f.probability for f in sorted(engine.rank(engine.encode_ct(vol)),
                                                      key=lambda f: LABELS.index(f.label))]
                       for vol, _ in studies])
    labels = np.stack([y for _, y in studies])
    macro, n_findings = _auroc_macro(scores, labels)
    floor = ref["value"] - 3 * ref["std"]
    print(f"fresh set: macro AUROC {macro:.3f} over {n_findings} findings, {n} studies; "
          f"bundle {ref['value']:.3f} ± {ref['std']:.3f} (floor {floor:.3f})")
    assert n_findings >= 12
    assert macro >= floor, (f"macro AUROC {macro:.3f} on {n} fresh studies is below the bundle's "
                            f"{ref['value']:.3f} - 3 x {ref['std']:.3f}")


@pytest.mark.parametrize("n", [48])
def test_reference_spread_shrinks_with_set_size(n):
    """The floor is meaningful: the spread of macro AUROC over n-study sets is what the metric says."""
    from train.metrics import subset_macro_auroc_spread

    rng = np.random.default_rng(0)
    labels = (rng.random((400, 6)) < 0.3).astype(int)
    scores = labels * 0.6 + rng.random((400, 6))
    small = subset_macro_auroc_spread(scores, labels, n, draws=300, seed=1)
    large = subset_macro_auroc_spread(scores, labels, 4 * n, draws=300, seed=1)
    assert 0.8 < small["value"] < 1.0 and abs(small["value"] - large["value"]) < 1e-12
    assert large["std"] < small["std"] * 0.7  # ~1/sqrt(4) = 0.5 in theory
    assert small["floor"] == pytest.approx(small["value"] - 3 * small["std"])


#: the dictation goal on the training wording (the dictation-reader issue): macro F1 over the mention states;
#: printed beside the result, not asserted while the shipped head is below it (README, "Model bundle")
DICTATION_GOAL = 0.95
#: how far 24 reports may fall below the bundle's own validation score before the head counts as broken
#: (per-report macro F1 spread over 24 reports; validation wording is the harder one, so this is generous)
DICTATION_MARGIN = 0.10


def _dictation_reference() -> float:
    """The bundle's own dictation macro F1: the distilled student's head on the validation split (held-out
    wording and voices), as ``speechct-train evaluate`` stored it in ``bundle.json``."""
    manifest = json.loads((default_bundle_path() / "bundle.json").read_text())
    systems = manifest.get("evaluation", {}).get("groups", {}).get("held-out voices", {}).get("systems", {})
    value = systems.get("distilled student", {}).get("dictation_macro_f1")
    assert value is not None, "the committed default bundle carries no dictation evaluation (re-run evaluate + export)"
    return float(value)


def _dictation(plan):
    """A fresh study's dictation in the training wording, read by a held-out voice at a random rate."""
    from train.synth.reports import write_report
    from train.synth.speechrate import _draw_reading
    from train.synth.voices import speak, valid_voices

    kernel = "standard" if plan.recon == 1 else "sharp"
    p = make_phantom(plan.seed, plan.labels, size="small", sex=plan.sex, age=plan.age, kernel=kernel,
                     recon=plan.recon - 1)
    report = write_report(p.findings, wording="train", seed=plan.report_seed, contrast=p.patient["contrast"])
    voice, rate, pitch = _draw_reading(np.random.default_rng([FRESH_SEED, plan.seed]), valid_voices())
    return speak(report.dictation, voice, rate, pitch), [report.mentions[lab] for lab in LABELS]


def test_default_bundle_hears_fresh_dictations_in_held_out_voices():
    """The bundle's dictation head on 24 fresh dictations in the training wording, read by voices no
    training study used: a regression check. Macro F1 over the mention states must stay within
    ``DICTATION_MARGIN`` of the bundle's validation score (a head that lost its skill, a changed frame
    path or a broken audio front end fails); the issue's goal (``DICTATION_GOAL``) is printed beside it. A bundle whose head has three states predates the report grammar and its
    four mention states: it is not scored against them."""
    from engine.models.dictation import CLASSES
    from train.metrics import dictation_f1

    engine = Engine(device="cpu", cache_dir=False)
    assert engine.has_dictation_head
    if engine.bundle.manifest.dictation_head.classes != CLASSES:
        pytest.skip("the installed bundle's dictation head has three states: it predates the report grammar "
                    "(retrain with make bundle)")
    plans = [p for p in plan_dataset(40, 0, FRESH_SEED + 1) if p.split == "train"][:24]
    with ProcessPoolExecutor(max_workers=2) as pool:
        items = list(pool.map(_dictation, plans))
    predicted, said = [], []
    for wave, mentions in items:
        emb, frames = engine.encode_speech_frames(wave, 16_000)
        predicted.append([CLASSES.index(d.status) for d in engine.dictation(emb, frames)])
        said.append([CLASSES.index(m) for m in mentions])
    out = dictation_f1(np.array(predicted), np.array(said), CLASSES, LABELS)
    floor = _dictation_reference() - DICTATION_MARGIN
    print(f"dictation on {len(items)} fresh held-out-voice reports: macro F1 {out['macro_f1']:.3f} {out['per_class']} "
          f"(floor {floor:.3f}; goal {DICTATION_GOAL}: {'met' if out['macro_f1'] >= DICTATION_GOAL else 'not met'})")
    assert out["macro_f1"] >= floor, out["per_class"]
