"""Render synthetic phantoms as axial/coronal PNGs, at the written size and after prepare_ct (CPU spec).

    python scripts/render_phantoms.py OUT_DIR [--seeds 1 2 3] [--size default|small]

Each seed gets a few findings (listed in the figure title); lung window (W 1500 / L −600)
and mediastinal window (W 350 / L 50) views are shown side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.preprocess import CPU_SPEC, prepare_ct  # noqa: E402
from train.synth.phantom import make_phantom  # noqa: E402

CASES = {
    1: ["Pleural effusion", "Lung nodule", "Arterial wall calcification", "Medical material", "Emphysema"],
    2: ["Consolidation", "Cardiomegaly", "Pericardial effusion", "Interlobular septal thickening", "Lymphadenopathy"],
    3: ["Atelectasis", "Bronchiectasis", "Peribronchial thickening", "Hiatal hernia",
        "Coronary artery wall calcification"],
    4: ["Lung opacity", "Mosaic attenuation pattern", "Pulmonary fibrotic sequela"],
}


def _window(a, width, level):
    return np.clip((a - (level - width / 2)) / width, 0, 1)


def render(out: Path, seed: int, labels: list[str], size: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph = make_phantom(seed, labels, size=size)
    vol = ph.volume
    a = vol.array.astype(np.float32)
    nz = a.shape[0]
    sz, sy, sx = vol.spacing
    prepared = prepare_ct(vol, CPU_SPEC) * 1000.0  # (z, x, y) → back to (z, y, x) for display
    prepared = prepared.transpose(0, 2, 1)
    paths = []
    for tag, img, (dz, dy) in (("written", a, (sz, sy)), ("cpu-spec", prepared, CPU_SPEC.spacing[:2])):
        fig, axes = plt.subplots(2, 4, figsize=(20, 10.5))
        n = img.shape[0]
        for col, frac in enumerate((0.78, 0.6, 0.42)):
            k = int(frac * n)
            axes[0, col].imshow(_window(img[k], 1500, -600), cmap="gray")
            axes[0, col].set_title(f"axial k={k} (lung)")
            axes[1, col].imshow(_window(img[k], 350, 50), cmap="gray")
            axes[1, col].set_title(f"axial k={k} (mediastinum)")
        cor = img[:, int(img.shape[1] * 0.55)][::-1]
        axes[0, 3].imshow(_window(cor, 1500, -600), cmap="gray", aspect=dz / dy)
        axes[0, 3].set_title("coronal (lung)")
        sag = img[:, :, int(img.shape[2] * 0.36)][::-1]
        axes[1, 3].imshow(_window(sag, 1500, -600), cmap="gray", aspect=dz / dy)
        axes[1, 3].set_title("sagittal, patient right (lung)")
        for ax in axes.ravel():
            ax.axis("off")
        fig.suptitle(f"seed {seed} [{tag} {img.shape}]: " + "; ".join(
            f"{lab} ({d.get('side') or ''} {', '.join(d.get('lobes') or [])} {d.get('severity') or ''})"
            for lab, d in ph.findings.items()), fontsize=9, wrap=True)
        fig.tight_layout()
        path = out / f"phantom_seed{seed}_{tag}.png"
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(path)
    del nz
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=sorted(CASES))
    p.add_argument("--size", choices=("default", "small"), default="default")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for path in render(args.out, seed, CASES.get(seed, CASES[1]), args.size):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
