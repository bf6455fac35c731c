"""What a supervised reader of hand-made density features finds in the prepared volumes (issue 17).

The teacher's encoder and the supervised CNN (``scripts/experiments/cnn_ceiling.py``) both score the same
on their own training volumes as on new ones (about 0.71 macro AUROC): they underfit. This asks whether
the findings are in the prepared volumes at all, at the encoder's spec (cpu-128: 64 × 128 × 128), with no
learned filters: per volume, fixed radiomics-like features (HU histograms per region, per-block density
extremes, a texture measure inside aerated lung), then one gradient-boosted tree classifier per finding
trained on the train split, scored on the training volumes (can it fit?) and the validation split;
beside it a linear read-out (standardised features, L2 logistic regression): what a linear map in the
encoder could take from them. ``--density-path`` also scores a linear read-out of the teacher's own
per-block density features (``engine.models.ct_layers.DensityPath.features``, cpu-default's settings):
does the encoder already hold what it fails to learn?

If it reaches well above 0.71, the information is in the volumes and the encoder's training is the limit;
if not, the spec (resolution) is. Results: ``feature_ceiling.json`` beside this file; the trees' per-study
validation scores go to ``DATA/feature_ceiling_valid.json`` in the form ``speechct-train evaluate
--ceiling FILE`` reads (``train.evaluate.CEILING_KEYS``), so the per-finding table can show them.

    python scripts/experiments/ct_encoder/feature_ceiling.py --data build/bundle-data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))

from cnn_ceiling import _records, _Volumes  # noqa: E402

HERE = Path(__file__).resolve().parent
#: HU bin edges of the histograms (air, emphysema, lung, ground glass, soft tissue, fluid, calcium, metal)
EDGES = np.array([-1e4, -950, -900, -850, -800, -700, -600, -500, -300, -100, 0, 30, 60, 100, 200, 400, 1000, 1e4])
#: regions: slices in 4, rows in 2, columns in 2 (a side and a craniocaudal level per region)
GRID = (4, 2, 2)
BLOCK = 8


def features(vol: np.ndarray) -> np.ndarray:
    """A fixed feature vector of one prepared volume (HU / 1000, z y x)."""
    hu = vol.astype(np.float32) * 1000.0
    z, y, x = hu.shape
    out = []
    glob = np.histogram(hu, EDGES)[0] / hu.size
    out.append(glob)
    for zi in np.array_split(np.arange(z), GRID[0]):
        for yi in np.array_split(np.arange(y), GRID[1]):
            for xi in np.array_split(np.arange(x), GRID[2]):
                r = hu[zi[0]:zi[-1] + 1, yi[0]:yi[-1] + 1, xi[0]:xi[-1] + 1]
                out.append(np.histogram(r, EDGES)[0] / r.size)
    # per 8^3 block: fractions in a few density classes; their upper quantiles find small dense things
    b = hu[: z - z % BLOCK, : y - y % BLOCK, : x - x % BLOCK]
    b = b.reshape(z // BLOCK, BLOCK, y // BLOCK, BLOCK, x // BLOCK, BLOCK).transpose(0, 2, 4, 1, 3, 5)
    b = b.reshape(-1, BLOCK ** 3)
    lung = (b < -700).mean(1)
    classes = [(b < -950).mean(1), ((b > -700) & (b < -300)).mean(1), ((b > -100) & (b < 100)).mean(1),
               (b > 150).mean(1), (b > 600).mean(1), b.max(1) / 1000.0, b.std(1) / 1000.0]
    in_lung = lung > 0.5  # blocks mostly of aerated lung: what else is in them (nodules, opacities, walls)
    for c in classes:
        q = np.quantile(c, [0.5, 0.9, 0.99, 1.0])
        ql = np.quantile(c[in_lung], [0.5, 0.9, 0.99, 1.0]) if in_lung.any() else np.zeros(4)
        out += [q, ql]
    # texture inside aerated lung: mean absolute difference to the neighbours along each axis
    lungv = (hu > -980) & (hu < -500)  # engine.models.ct_summaries.TEXTURE_BAND (was -1000 before session 12)
    tex = []
    for ax in range(3):
        d = np.abs(np.diff(hu, axis=ax))
        m = lungv.take(range(hu.shape[ax] - 1), axis=ax)
        tex.append(d[m].mean() / 1000.0 if m.any() else 0.0)
    out.append(np.array(tex + [lungv.mean(), hu[lungv].mean() / 1000.0 if lungv.any() else 0.0]))
    return np.concatenate([np.ravel(o) for o in out]).astype(np.float32)


def table(records, spec, cache, cache_file: Path) -> np.ndarray:
    if cache_file.is_file():
        saved = np.load(cache_file, allow_pickle=False)
        if list(saved["names"]) == [r.volume_name for r in records]:
            return saved["x"]
    vols = _Volumes(records, spec, cache)
    t0 = time.perf_counter()
    rows = []
    for i in range(len(vols)):
        rows.append(features(vols(i)))
        if (i + 1) % 100 == 0:
            print(f"  features {i + 1}/{len(vols)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    x = np.stack(rows)
    np.savez(cache_file, x=x, names=np.array([r.volume_name for r in records]))
    return x


def density_table(records, spec, cache, cache_file: Path) -> np.ndarray:
    """The teacher's per-block density features (cpu-default's pool and thresholds) per volume."""
    import torch

    from engine.models.ct_layers import DensityPath

    if cache_file.is_file():
        saved = np.load(cache_file, allow_pickle=False)
        if list(saved["names"]) == [r.volume_name for r in records]:
            return saved["x"]
    cfg = json.loads((ROOT / "train" / "configs" / "cpu-default.json").read_text())["ct_encoder"]
    path = DensityPath(tuple(cfg["input_size"]), tuple(cfg["density_pool"]), tuple(cfg["density_thresholds"]),
                       1, 1)
    vols = _Volumes(records, spec, cache)
    with torch.no_grad():
        x = np.stack([path.features(torch.from_numpy(vols(i))[None, None]).numpy()[0] for i in range(len(vols))])
    np.savez(cache_file, x=x, names=np.array([r.volume_name for r in records]))
    return x


def linear_read_out(x_tr, y_tr, x_va, y_va, c: float) -> list[float]:
    """Per finding, validation AUROC of an L2 logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(x_tr)
    a, b = scale.transform(x_tr), scale.transform(x_va)
    return [float(roc_auc_score(y_va[:, k], LogisticRegression(C=c, max_iter=3000).fit(a, y_tr[:, k])
                                .decision_function(b))) for k in range(y_tr.shape[1])]


def main(argv=None) -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from engine.labels import LABELS
    from engine.preprocess import get_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--spec", default="cpu-128")
    p.add_argument("--out", type=Path, default=HERE / "feature_ceiling.json")
    p.add_argument("--density-path", action="store_true", help="also the teacher's per-block features (slow)")
    a = p.parse_args(argv)
    spec = get_spec(a.spec)
    cache = a.data / "cache"
    tr, va = _records(a.data, "train"), _records(a.data, "valid")
    t0 = time.perf_counter()
    x_tr = table(tr, spec, cache, a.data / f"feature_table_train_{spec.name}.npz")
    x_va = table(va, spec, cache, a.data / f"feature_table_valid_{spec.name}.npz")
    y_tr = np.stack([r.labels for r in tr]).astype(int)
    y_va = np.stack([r.labels for r in va]).astype(int)
    per, per_tr, scores = {}, {}, np.zeros(y_va.shape)
    for k, name in enumerate(LABELS):
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                             l2_regularization=1.0, random_state=0)
        clf.fit(x_tr, y_tr[:, k])
        scores[:, k] = clf.predict_proba(x_va)[:, 1]
        per[name] = float(roc_auc_score(y_va[:, k], scores[:, k]))
        per_tr[name] = float(roc_auc_score(y_tr[:, k], clf.predict_proba(x_tr)[:, 1]))
        print(f"{name:38s} train {per_tr[name]:.3f}  valid {per[name]:.3f}", flush=True)
    linear = dict(zip(LABELS, linear_read_out(x_tr, y_tr, x_va, y_va, 0.05)))
    print(f"linear read-out of the same features: macro {np.mean(list(linear.values())):.3f}", flush=True)
    rec = {"kind": "gradient-boosted trees on fixed density features (HU histograms per region, per-block "
                   "density quantiles, lung texture), one per finding",
           "spec": spec.name, "n_features": int(x_tr.shape[1]), "n_train": len(tr), "n_valid": len(va),
           "macro_auroc_valid": float(np.mean(list(per.values()))),
           "macro_auroc_train": float(np.mean(list(per_tr.values()))),
           "per_finding_valid": per, "per_finding_train": per_tr,
           "linear_c": 0.05, "macro_auroc_valid_linear": float(np.mean(list(linear.values()))),
           "per_finding_valid_linear": linear,
           "seconds": round(time.perf_counter() - t0, 1),
           "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.density_path:
        d_tr = density_table(tr, spec, cache, a.data / f"density_table_train_{spec.name}.npz")
        d_va = density_table(va, spec, cache, a.data / f"density_table_valid_{spec.name}.npz")
        dens = dict(zip(LABELS, linear_read_out(d_tr, y_tr, d_va, y_va, 0.01)))
        rec["density_path_linear"] = {"n_features": int(d_tr.shape[1]), "c": 0.01,
                                      "macro_auroc_valid": float(np.mean(list(dens.values()))),
                                      "per_finding_valid": dens}
        print(f"linear read-out of the teacher's per-block density features: macro "
              f"{rec['density_path_linear']['macro_auroc_valid']:.3f}", flush=True)
    a.out.write_text(json.dumps(rec, indent=1) + "\n")
    ceiling = {"kind": "gradient-boosted trees on fixed density features (scripts/experiments/ct_encoder/"
                       "feature_ceiling.py)", "labels": list(LABELS), "split": "valid",
               "measured": rec["measured"], "train": {"n": len(tr), "macro_auroc": rec["macro_auroc_train"]},
               "scores": {r.volume_name: [round(float(v), 6) for v in row] for r, row in zip(va, scores)}}
    (a.data / "feature_ceiling_valid.json").write_text(json.dumps(ceiling) + "\n")
    print(f"macro AUROC valid {rec['macro_auroc_valid']:.3f}, train {rec['macro_auroc_train']:.3f}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
