"""Write a synthetic dataset in CT-RATE's exact layout.

Under ``root`` (e.g. ``<data>/ct-rate``)::

    dataset/train/train_1/train_1_a/train_1_a_1.nii.gz          (v1: raw int16, slope/intercept in CSV)
    dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz    (v2: HU int16, the "_fixed" folders)
    dataset/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz
    dataset/radiology_text_reports/{train_reports.csv,validation_reports.csv}
    dataset/multi_abnormality_labels/{train_predicted_labels.csv,valid_predicted_labels.csv}
    dataset/multi_abnormality_labels/{train,valid}_mentions_chexpert.csv          (synthetic sets only)
    dataset/radiology_text_reports/{train,valid}_dictations.csv                   (synthetic sets only)
    dataset/metadata/{train_metadata.csv,validation_metadata.csv}
    dataset/footprints/<volume>.npz        where each finding lies (synthetic sets only, train.footprints)
    dataset/multi_abnormality_labels/valid_planted.csv   dictation slips planted in the test root (synthetic)

Like CT-RATE, some patients have a second scan (``_b``) and some scans a second
reconstruction (``_2``, a sharper kernel of the same acquisition). v1 volumes store
``raw = HU − RescaleIntercept`` (slope 1, intercept −1024) with *no* rescale in the NIfTI
header, so only the metadata CSV turns them into HU; v2 (``_fixed``) volumes hold HU and
their metadata keeps the original slope/intercept, which must not be applied again.

Resumable and crash-safe: each volume is written atomically (temporary file + rename) and
then its record (report, labels, mentions, metadata row, details) goes to
``root/.records/<volume>.json``, also atomically; a volume whose record exists is skipped.
The CSVs are assembled from the records at the end. Same seed → same bytes.

Mentions are four-state (:mod:`train.mentions`); the dictations CSV holds what a radiologist would say
(``Dictation_EN``: indication, spoken commands, self-corrections, sometimes the impression), which
Speech-RATE reads aloud. ``wording`` says which part of the report grammar each split uses
(:mod:`train.synth.grammar`); the held-out test set is a third root whose ``valid`` split reads the
``test`` wording (:data:`TEST_WORDING`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from engine.labels import LABELS
from train.footprints import footprint_path, write_footprints
from train.mentions import MENTIONS_FILE, mentions_csv_bytes
from train.synth.cohort import sample_cohort
from train.synth.phantom import SIZES, make_phantom
from train.synth.reports import write_report

SPLITS = ("train", "valid")
#: CT-RATE's file names for the split-level CSVs.
REPORT_CSV = {"train": "train_reports.csv", "valid": "validation_reports.csv"}
LABEL_CSV = {"train": "train_predicted_labels.csv", "valid": "valid_predicted_labels.csv"}
DICTATION_CSV = {"train": "train_dictations.csv", "valid": "valid_dictations.csv"}
DICTATION_COLUMNS = ("VolumeName", "Dictation_EN")
#: Wording per split of the main root, and of the test root (CT-RATE's layout has train and valid only).
MAIN_WORDING = {"train": "train", "valid": "valid"}
TEST_WORDING = {"valid": "test"}
METADATA_CSV = {"train": "train_metadata.csv", "valid": "validation_metadata.csv"}
#: Studies whose dictation leaves out a finding the image has (``write_volume(plant_rate=)``): the
#: finding (a column of the labels CSV) per volume; studies without a planted slip are not listed.
PLANTED_CSV = {"train": "train_planted.csv", "valid": "valid_planted.csv"}
PLANTED_COLUMNS = ("VolumeName", "Planted")
METADATA_COLUMNS = (
    "VolumeName", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "PatientSex", "PatientAge",
    "ReconstructionDiameter", "KVP", "XRayTubeCurrent", "ConvolutionKernel", "PatientPosition", "StudyDate",
    "SliceThickness", "Rows", "Columns", "NumberofSlices", "XYSpacing", "ZSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "RescaleIntercept", "RescaleSlope", "RescaleType",
)
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
_SCANNERS = (("SIEMENS", "SOMATOM Definition Edge"), ("PHILIPS", "Ingenuity CT"), ("GE MEDICAL SYSTEMS", "Revolution"),
             ("TOSHIBA", "Aquilion ONE"))


@dataclass(frozen=True)
class VolumePlan:
    split: str
    patient: int  # 1-based within the split
    scan: str  # "a", "b"
    recon: int  # 1, 2
    seed: int  # phantom seed (shared by the reconstructions of one scan)
    labels: tuple[str, ...]
    age: int
    sex: str
    report_seed: int

    @property
    def name(self) -> str:
        return f"{self.split}_{self.patient}_{self.scan}_{self.recon}"

    def relpath(self, version: int) -> str:
        folder = self.split + ("_fixed" if version == 2 else "")
        pid, sid = f"{self.split}_{self.patient}", f"{self.split}_{self.patient}_{self.scan}"
        return f"dataset/{folder}/{pid}/{sid}/{self.name}.nii.gz"


def plan_dataset(n_train: int, n_valid: int, seed: int, p_second_scan: float = 0.12,
                 p_second_recon: float = 0.25) -> list[VolumePlan]:
    """Every volume to write, in CSV order. ``n_*`` count patients (studies ``_a``)."""
    plans: list[VolumePlan] = []
    for split_idx, (split, n) in enumerate((("train", n_train), ("valid", n_valid))):
        cohort = sample_cohort(n, seed * 2 + split_idx)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31, split_idx])
        for i, patient in enumerate(cohort, start=1):
            scans = ["a"] + (["b"] if rng.random() < p_second_scan else [])
            for j, scan in enumerate(scans):
                labels = tuple(patient.present)
                if scan == "b":  # a follow-up: most findings persist, some resolve
                    labels = tuple(lab for lab in labels if rng.random() < 0.8)
                recons = 2 if rng.random() < p_second_recon else 1
                phantom_seed = int(rng.integers(1 << 31))
                report_seed = int(rng.integers(1 << 31))
                for r in range(1, recons + 1):
                    plans.append(VolumePlan(split, i, scan, r, phantom_seed, labels, patient.age + j, patient.sex,
                                            report_seed))
    return plans


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def _record_path(root: Path, name: str) -> Path:
    return root / ".records" / f"{name}.json"


def _metadata_row(plan: VolumePlan, volume, rng: np.random.Generator, intercept: float) -> dict:
    maker, model = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    nz, ny, nx = volume.shape
    sz, sy, sx = volume.spacing
    days = int(rng.integers(0, 700))
    date = np.datetime64("2019-01-01") + np.timedelta64(days, "D")
    return {
        "VolumeName": f"{plan.name}.nii.gz", "Manufacturer": maker, "ManufacturerModelName": model,
        "SeriesDescription": "THORAX" if plan.recon == 1 else "THORAX SHARP", "PatientSex": plan.sex,
        "PatientAge": f"{plan.age:03d}Y", "ReconstructionDiameter": round(nx * sx, 1),
        "KVP": int(rng.choice([100, 120, 120, 120])), "XRayTubeCurrent": int(rng.integers(80, 320)),
        "ConvolutionKernel": "B30f" if plan.recon == 1 else "B60f", "PatientPosition": "HFS",
        "StudyDate": str(date).replace("-", ""), "SliceThickness": sz, "Rows": ny, "Columns": nx,
        "NumberofSlices": nz, "XYSpacing": f"[{sx:g}, {sy:g}]", "ZSpacing": sz,
        "ImagePositionPatient": "[" + ", ".join(f"{v:g}" for v in volume.origin) + "]",
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "RescaleIntercept": intercept, "RescaleSlope": 1.0, "RescaleType": "HU",
    }


def write_volume(root: str | Path, plan: VolumePlan, *, size: str = "default", version: int = 1,
                 wording: dict[str, str] | None = None, plant_rate: float = 0.0) -> dict:
    """Write one volume and its record (skipped when the record already exists); returns the record.

    ``plant_rate``: the share of studies with findings whose dictation leaves one present finding out
    (the report is written as if the finding were absent: negated, settled or not mentioned), as a
    radiologist's slip the dictation check should catch. The labels stay the image's truth, the mentions
    say what was dictated, and the record's ``planted`` names the finding (see :data:`PLANTED_CSV`)."""
    from engine.io import write_nifti

    root = Path(root)
    rec_path = _record_path(root, plan.name)
    target = root / plan.relpath(version)
    prints = footprint_path(root, f"{plan.name}.nii.gz")
    if rec_path.exists() and target.exists() and prints.exists():
        return json.loads(rec_path.read_text())
    kernel = "standard" if plan.recon == 1 else "sharp"
    phantom = make_phantom(plan.seed, plan.labels, size=size, sex=plan.sex, age=plan.age, kernel=kernel,
                           recon=plan.recon - 1, with_footprints=True)
    vol = phantom.volume
    write_footprints(prints, phantom.footprints)
    rng = np.random.default_rng([plan.seed, 41])
    intercept = -1024.0
    if version == 1:
        write_nifti(vol, target, dtype="int16", slope=1.0, intercept=intercept, header_rescale=False)
    else:
        write_nifti(vol, target, dtype="int16", slope=1.0, intercept=0.0, header_rescale=True)
    planted = None
    if plant_rate and phantom.findings:
        plant_rng = np.random.default_rng([plan.seed, 43])
        if plant_rng.random() < plant_rate:
            planted = str(plant_rng.choice(sorted(phantom.findings)))
    said = {lab: d for lab, d in phantom.findings.items() if lab != planted}
    report = write_report(said, wording=(wording or MAIN_WORDING)[plan.split], seed=plan.report_seed,
                          contrast=phantom.patient["contrast"], slice_mm=vol.spacing[0])
    record = {
        "plan": asdict(plan), "path": plan.relpath(version),
        "report": report.row(f"{plan.name}.nii.gz"),
        "labels": {lab: int(phantom.labels[lab]) for lab in LABELS},
        "mentions": report.mentions,
        "dictation": report.dictation,
        "forms": report.forms,
        "wording": (wording or MAIN_WORDING)[plan.split],
        "metadata": _metadata_row(plan, vol, rng, intercept),
        "details": phantom.findings, "patient": phantom.patient,
        "words": len(report.findings.split()),
        "planted": planted,
    }
    _atomic_write_bytes(rec_path, json.dumps(record, sort_keys=True, indent=1).encode())
    return record


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row)
    return buf.getvalue().encode()


def assemble_csvs(root: str | Path, plans: list[VolumePlan]) -> dict[str, Path]:
    """Write the split-level CSVs from the per-volume records (in plan order)."""
    root = Path(root)
    out = {}
    for split in SPLITS:
        records = [json.loads(_record_path(root, p.name).read_text()) for p in plans if p.split == split]
        if not records:
            continue
        ds = root / "dataset"
        files = {
            ds / "radiology_text_reports" / REPORT_CSV[split]: _csv_bytes(REPORT_COLUMNS, [r["report"] for r in records]),
            ds / "multi_abnormality_labels" / LABEL_CSV[split]: _csv_bytes(
                ("VolumeName", *LABELS), [{"VolumeName": r["report"]["VolumeName"], **r["labels"]} for r in records]),
            ds / "multi_abnormality_labels" / MENTIONS_FILE[split]: mentions_csv_bytes(
                [(r["report"]["VolumeName"], r["mentions"]) for r in records]),
            ds / "radiology_text_reports" / DICTATION_CSV[split]: _csv_bytes(
                DICTATION_COLUMNS, [{"VolumeName": r["report"]["VolumeName"], "Dictation_EN": r["dictation"]}
                                    for r in records]),
            ds / "metadata" / METADATA_CSV[split]: _csv_bytes(METADATA_COLUMNS, [r["metadata"] for r in records]),
        }
        if any(r.get("planted") for r in records):
            files[ds / "multi_abnormality_labels" / PLANTED_CSV[split]] = _csv_bytes(
                PLANTED_COLUMNS, [{"VolumeName": r["report"]["VolumeName"], "Planted": r["planted"]}
                                  for r in records if r.get("planted")])
        for path, data in files.items():
            _atomic_write_bytes(path, data)
            out[path.name] = path
    return out


def _job(args):
    root, plan, size, version, wording, plant_rate = args
    t = time.perf_counter()
    rec = write_volume(root, plan, size=size, version=version, wording=wording, plant_rate=plant_rate)
    return plan.name, time.perf_counter() - t, rec["labels"], rec["words"]


def _init_worker() -> None:
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def write_ctrate(root: str | Path, n_train: int, n_valid: int, *, seed: int = 0, size: str = "default",
                 version: int = 1, workers: int = 1, progress: bool = True,
                 on_volume: Callable[[str], None] | None = None, wording: dict[str, str] | None = None,
                 plant_rate: float = 0.0) -> dict:
    """Generate the whole CT-RATE-layout tree; returns a summary dict (counts, timings)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if version not in (1, 2):
        raise ValueError(f"CT-RATE version must be 1 or 2, got {version!r}")
    root = Path(root)
    t0 = time.perf_counter()
    plans = plan_dataset(n_train, n_valid, seed)
    jobs = [(str(root), p, size, version, wording or MAIN_WORDING, plant_rate) for p in plans]
    results = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="CT volumes", unit="vol")
    if workers <= 1:
        _init_worker()
        for job in jobs:
            results.append(_job(job))
            if bar:
                bar.update()
            if on_volume:
                on_volume(job[1].name)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for res in pool.map(_job, jobs, chunksize=1):
                results.append(res)
                if bar:
                    bar.update()
                if on_volume:
                    on_volume(res[0])
    if bar:
        bar.close()
    assemble_csvs(root, plans)
    counts = {split: {lab: 0 for lab in LABELS} for split in SPLITS}
    n_vol = {split: 0 for split in SPLITS}
    for plan, (_, _, labels, _) in zip(plans, results):
        n_vol[plan.split] += 1
        for lab, v in labels.items():
            counts[plan.split][lab] += v
    words = [r[3] for r in results]
    return {
        "volumes": n_vol, "patients": {"train": n_train, "valid": n_valid}, "label_counts": counts,
        "findings_words_mean": float(np.mean(words)) if words else 0.0,
        "findings_words_max": int(max(words)) if words else 0, "seconds": round(time.perf_counter() - t0, 1),
        "seconds_per_volume": round(float(np.mean([r[1] for r in results])), 2) if results else 0.0,
    }
