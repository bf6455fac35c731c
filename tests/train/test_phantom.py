"""The phantom generator: deterministic, LPS-oriented, realistic HU, findings visible at the CPU spec."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engine.labels import LABELS
from tests.train.sep_stats import finding_stat
from train.synth.phantom import SIZES, make_phantom

#: Findings whose simple statistic does not reach AUROC 0.9 yet at 20 vs 20 default-size phantoms.
#: The slow test runs them as strict xfails, so a fix shows up as a failure asking for the entry to go.
#: Empty since Cardiomegaly (contrast-aware heart density, 0.938) and Lung opacity (densest local
#: ground-glass patch, 1.0) got statistics that look where the finding is (2026-11-29).
WEAK: tuple[str, ...] = ()


def test_same_seed_same_voxels_and_details():
    a = make_phantom(11, ["Lung nodule", "Pleural effusion"], size="small")
    b = make_phantom(11, ["Lung nodule", "Pleural effusion"], size="small")
    assert a.volume.array.tobytes() == b.volume.array.tobytes()
    assert a.findings == b.findings
    c = make_phantom(12, ["Lung nodule", "Pleural effusion"], size="small")
    assert c.volume.array.tobytes() != a.volume.array.tobytes()


def test_geometry_and_orientation():
    p = make_phantom(3, [], size="small", with_masks=True)
    v = p.volume
    assert v.shape == SIZES["small"].shape and v.spacing == SIZES["small"].spacing
    assert v.orientation_code() == "LPS" and v.array.dtype == np.int16
    m = p.masks
    # the heart lies to the patient's left (+x) and anterior (-y); the spine posterior
    zz, yy, xx = np.nonzero(m["heart"])
    assert xx.mean() > v.shape[2] / 2 and yy.mean() < np.nonzero(m["lung"])[1].mean()
    # the lung apices are superior (+z) to the heart
    assert np.nonzero(m["lung"])[0].max() > zz.max()
    assert (p.masks["lobes"][m["lung"]] > 0).all() and set(np.unique(m["lobes"])) == {0, 1, 2, 3, 4, 5}


def test_tissue_hu():
    p = make_phantom(5, [], size="small", with_masks=True)
    a = p.volume.array.astype(float)
    assert abs(np.median(a[p.masks["lung"]]) + 840) < 60
    assert np.median(a[~p.masks["body"]]) < -950
    assert 20 < np.median(a[p.masks["heart"]]) < 300
    assert a.max() > 600  # bone


def test_rejects_unknown_label():
    with pytest.raises(ValueError, match="unknown finding"):
        make_phantom(0, ["Pneumothorax"], size="small")


def test_default_size_numbers():
    assert SIZES["default"].shape == (130, 256, 256)
    assert SIZES["default"].spacing == (2.5, 1.4, 1.4)


@functools.lru_cache(maxsize=2)
def _normals(n: int, size: str):
    return tuple(make_phantom(1000 + i, [], size=size, with_masks=True) for i in range(n))


def _auroc(label: str, n: int, size: str) -> float:
    pos = [finding_stat(label, make_phantom(2000 + 7 * i + LABELS.index(label), [label], size=size, with_masks=True))
           for i in range(n)]
    neg = [finding_stat(label, p) for p in _normals(n, size)]
    return roc_auc_score([1] * n + [0] * n, pos + neg)


@pytest.mark.parametrize("label", ["Pleural effusion", "Emphysema", "Pericardial effusion", "Medical material"])
def test_separable_fast(label):
    """Small variant: 3 phantoms with and 3 without (shared), on the CPU-spec grid itself."""
    assert _auroc(label, 3, "small") >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("label", [
    pytest.param(lab, marks=pytest.mark.xfail(strict=True, reason="below 0.9 at 20 vs 20 (WEAK)")) if lab in WEAK
    else lab
    for lab in LABELS
])
def test_separable_at_cpu_spec(label):
    """20 default-size phantoms with and 20 without, preprocessed to the CPU spec."""
    assert _auroc(label, 20, "default") >= 0.9
