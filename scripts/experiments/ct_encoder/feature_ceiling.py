"""What a supervised reader of hand-made density features finds in the prepared volumes (issue 17).

The teacher's encoder and the supervised CNN (``scripts/experiments/cnn_ceiling.py``) both score the same
on their own training volumes as on new ones (about 0.71 macro AUROC): they underfit. This asks whether
the findings are in the prepared volumes at all, at the encoder's spec (cpu-128: 64 × 128 × 128), with no
learned filters: per volume, fixed radiomics-like features (HU histograms per region, per-block density
extremes, a texture measure inside aerated lung), then one gradient-boosted tree classifier per finding
trained on the train split, scored on the training volumes (can it fit?) and the validation split.

If it reaches well above 0.71, the information is in the volumes and the encoder's training is the limit;
if not, the spec (resolution) is. Results: ``feature_ceiling.json`` beside this file.

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
    lungv = (hu > -1000) & (hu < -500)
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


def main(argv=None) -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from engine.labels import LABELS
    from engine.preprocess import get_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--spec", default="cpu-128")
    p.add_argument("--out", type=Path, default=HERE / "feature_ceiling.json")
    a = p.parse_args(argv)
    spec = get_spec(a.spec)
    cache = a.data / "cache"
    tr, va = _records(a.data, "train"), _records(a.data, "valid")
    t0 = time.perf_counter()
    x_tr = table(tr, spec, cache, a.data / f"feature_table_train_{spec.name}.npz")
    x_va = table(va, spec, cache, a.data / f"feature_table_valid_{spec.name}.npz")
    y_tr = np.stack([r.labels for r in tr]).astype(int)
    y_va = np.stack([r.labels for r in va]).astype(int)
    per, per_tr = {}, {}
    for k, name in enumerate(LABELS):
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                             l2_regularization=1.0, random_state=0)
        clf.fit(x_tr, y_tr[:, k])
        per[name] = float(roc_auc_score(y_va[:, k], clf.predict_proba(x_va)[:, 1]))
        per_tr[name] = float(roc_auc_score(y_tr[:, k], clf.predict_proba(x_tr)[:, 1]))
        print(f"{name:38s} train {per_tr[name]:.3f}  valid {per[name]:.3f}", flush=True)
    rec = {"kind": "gradient-boosted trees on fixed density features (HU histograms per region, per-block "
                   "density quantiles, lung texture), one per finding",
           "spec": spec.name, "n_features": int(x_tr.shape[1]), "n_train": len(tr), "n_valid": len(va),
           "macro_auroc_valid": float(np.mean(list(per.values()))),
           "macro_auroc_train": float(np.mean(list(per_tr.values()))),
           "per_finding_valid": per, "per_finding_train": per_tr,
           "seconds": round(time.perf_counter() - t0, 1),
           "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    a.out.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"macro AUROC valid {rec['macro_auroc_valid']:.3f}, train {rec['macro_auroc_train']:.3f}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
