"""Regenerate assets/samples/: three synthetic chest CT studies as DICOM series, with known findings.

    python scripts/make_samples.py [--out assets/samples]

Every study comes from :func:`train.synth.phantom.make_phantom` (the one generator behind all
synthetic data) at the ``default`` size the models are trained on (130 × 256 × 256 voxels at
2.5 × 1.4 × 1.4 mm), then is resampled, in HU, by the engine's own resampler to the CPU spec's
grid (64 × 128 × 128 at 5.0 × 2.8 × 2.8 mm), as a scanner's thick-slice reconstruction would be.
So the folder stays a few MB and the CT model reads the same voxels as from a training volume
(a phantom drawn directly on the coarse grid has sharper edges and more voxel noise than one
the preprocessing resampled). ``README.md`` lists each study's findings.
Same code → same bytes (fixed seeds and UIDs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.io import write_dicom_series  # noqa: E402
from engine.preprocess import get_spec, prepare_array  # noqa: E402
from engine.volume import Volume  # noqa: E402
from train.synth.phantom import SIZES, make_phantom  # noqa: E402
from train.synth.reports import write_report  # noqa: E402

STUDIES = {
    "study-001": (101, ["Pleural effusion", "Lung nodule", "Arterial wall calcification"],
                  {"Pleural effusion": {"side": "right", "severity": "moderate"},
                   "Lung nodule": {"count": 1, "lobes": ["right upper lobe"], "size_mm": 10, "kind": "solid"}}),
    "study-002": (202, ["Cardiomegaly", "Pericardial effusion", "Consolidation", "Medical material"],
                  {"Medical material": {"kind": "pacemaker"}, "Consolidation": {"severity": "moderate"}}),
    "study-003": (303, ["Emphysema", "Bronchiectasis", "Coronary artery wall calcification", "Lymphadenopathy"],
                  {"Emphysema": {"kind": "centrilobular", "severity": "moderate"}}),
}


def _describe(d: dict) -> str:
    parts = [d.get("severity"), d.get("kind"), d.get("side")]
    where = ", ".join(d.get("lobes") or []) or d.get("location") or ""
    size = f"{d['size_mm']} mm" if d.get("size_mm") is not None else ""
    return " ".join(str(p) for p in (*parts, size) if p) + (f" — {where}" if where else "")


def thick_slices(volume: Volume) -> Volume:
    """``volume`` (HU) on the cpu-128 grid, resampled by the engine's preprocessing arithmetic
    with no HU window: what the CT encoder reads, before its clipping, as a DICOM-storable series."""
    grid = dataclasses.replace(get_spec("cpu-128"), name="sample-grid", hu_window=(-1024.0, 3071.0),
                               scale_divisor=1.0, pad_value=-1024.0)
    hu = prepare_array(volume.array, volume.spacing, grid)
    return Volume(np.rint(hu).astype(np.int16), grid.spacing, origin=volume.origin, direction=volume.direction)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "samples")
    args = p.parse_args(argv)
    lines = ["# Sample studies", "",
             "Synthetic chest CT phantoms made by `scripts/make_samples.py` with `train.synth.phantom.make_phantom`",
             f"at the training size ({SIZES['default'].shape} voxels (z, y, x) at {SIZES['default'].spacing} mm),",
             "resampled by the engine's own resampler to the CPU model's grid, (64, 128, 128) at (5.0, 2.8, 2.8) mm",
             "(LPS, HU), as a thick-slice reconstruction.",
             "Each `dicom/` folder is one CT series, one file per slice. Findings are known by construction;",
             "`findings.json` holds the full instance details and `report.txt` a matching synthetic report.", ""]
    for name, (seed, labels, overrides) in STUDIES.items():
        ph = make_phantom(seed, labels, size="default", overrides=overrides)
        folder = args.out / name
        dicom = folder / "dicom"
        if dicom.exists():
            shutil.rmtree(dicom)
        series = thick_slices(ph.volume)
        write_dicom_series(series, dicom, series_description=f"SYNTHETIC CHEST {name}", seed=seed)
        rep = write_report(ph.findings, wording="train", seed=seed, contrast=ph.patient["contrast"],
                           slice_mm=series.spacing[0])
        (folder / "findings.json").write_text(json.dumps({"seed": seed, "patient": ph.patient,
                                                          "findings": ph.findings}, indent=1, sort_keys=True) + "\n")
        (folder / "report.txt").write_text(f"FINDINGS: {rep.findings}\n\nIMPRESSION: {rep.impressions}\n")
        lines.append(f"## {name} (seed {seed}; {ph.patient['sex']}, {ph.patient['age']} y, "
                     f"{'contrast' if ph.patient['contrast'] else 'non-contrast'})")
        lines += [f"- **{lab}**: {_describe(d)}" for lab, d in ph.findings.items()]
        lines.append("")
        print(name, list(ph.findings))
    lines += [
        "## Dictations",
        "`study-00N/dictation.wav` (16 kHz mono, ≤ 30 s) and `dictation.txt` (what was read) are made by",
        "`scripts/make_sample_dictations.py` with the project's offline voices. study-002's dictation leaves out",
        'its consolidation on purpose, to show an "omitted" discrepancy; with the default bundle, whose image model',
        'is weak on consolidation (validation AUROC 0.74 < 0.75), `make run` lists it as not checked instead.',
        "",
    ]
    (args.out / "README.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
