"""Load a 300-slice 512×512 CT series the app's way (``engine.io.open_study``: the series list and the
chosen series' volume from one walk and one header parse per file) against SimpleITK's ImageSeriesReader.

    .venv/bin/python bench/dicom_load.py [--runs 5] [--slices 300] [--folder DIR]

The series is written once with our writer (int16 HU, uncompressed, shuffled InstanceNumbers)
into a temp folder and reused by later runs. Each timed load is a fresh Python process (imports
included, page cache warm for both readers alike); the script prints each reader's median
whole-process and in-process times, checks that both give identical HU arrays, and prints the
ratio ours / SimpleITK (goal ≤ 0.8).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_OURS = """
import sys, time, json
t0 = time.perf_counter()
from engine.io import open_study
t1 = time.perf_counter()
source = open_study(sys.argv[1])
series = source.series
vol = source.load()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "shape": list(vol.shape), "series": len(series)}))
"""

_SITK = """
import sys, time, json
t0 = time.perf_counter()
import SimpleITK as sitk
t1 = time.perf_counter()
reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(sys.argv[1]))
image = reader.Execute()
arr = sitk.GetArrayViewFromImage(image)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "shape": list(arr.shape)}))
"""


# The obvious pydicom loop, for scale: read every file whole, sort by position along the normal.
_NAIVE = """
import sys, time, json, glob, os
t0 = time.perf_counter()
import numpy as np, pydicom
t1 = time.perf_counter()
sets = [pydicom.dcmread(p) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.dcm")))]
iop = np.array(sets[0].ImageOrientationPatient, float)
normal = np.cross(iop[:3], iop[3:])
sets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
arr = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in sets])
arr = arr.astype(np.float32)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "shape": list(arr.shape)}))
"""


def make_series(folder: Path, n_slices: int) -> Path:
    """Write (once) an int16 body-like phantom: air, soft tissue ellipse, lungs, bone ring, noise."""
    marker = folder / "COMPLETE"
    if marker.exists():
        return folder
    from engine.io.dicom_write import write_dicom_series
    from engine.volume import Volume

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((xx - 256) / 230) ** 2 + ((yy - 270) / 170) ** 2 < 1
    lungs = (((np.abs(xx - 256) - 95) / 70) ** 2 + ((yy - 250) / 110) ** 2) < 1
    ring = (((xx - 256) / 225) ** 2 + ((yy - 270) / 165) ** 2 > 0.93) & body
    plane = np.full((512, 512), -1000, np.int16)
    plane[body] = 40
    plane[lungs] = -850
    plane[ring] = 700
    array = np.empty((n_slices, 512, 512), np.int16)
    for k in range(n_slices):
        array[k] = plane + rng.normal(0, 20, plane.shape).astype(np.int16)
    vol = Volume(array, (1.0, 0.75, 0.75), origin=(-192.0, -192.0, -150.0))
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_dicom_series(vol, folder, series_description="bench", instance_order="shuffled")
    print(f"wrote {n_slices} slices to {folder} in {time.perf_counter() - t:.1f} s")
    marker.write_text("ok")
    return folder


def run_child(code: str, *args: str) -> dict:
    """Run one load in a fresh interpreter: its wall time and its CPU time (user + system).

    CPU time is the steadier number on a shared machine: waiting for a core does not count.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, cwd=REPO
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def check_identical(folder: Path) -> None:
    import SimpleITK as sitk

    from engine.io import open_study

    ours = open_study(folder).load()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    theirs = sitk.GetArrayFromImage(image)  # (z, y, x), slices sorted along the normal like ours
    if ours.array.shape != theirs.shape or not np.array_equal(
        ours.array.astype(np.float64), theirs.astype(np.float64)
    ):
        raise SystemExit("HU arrays differ between engine.io and SimpleITK")
    np.testing.assert_allclose(ours.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.spacing[::-1], image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(ours.direction, np.array(image.GetDirection()).reshape(3, 3), atol=1e-6)
    print(
        f"identical HU: shape {ours.shape}, ours {ours.array.dtype}, SimpleITK {theirs.dtype}; geometry equal"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--skip-naive", action="store_true", help="do not time the plain pydicom loop")
    parser.add_argument("--folder", type=Path, default=None, help="where the series is written (reused)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.gettempdir()) / f"speechct-bench-dicom-{args.slices}"
    make_series(folder, args.slices)
    check_identical(folder)
    # One untimed load each so both find the files in the page cache.
    run_child(_OURS, str(folder))
    run_child(_SITK, str(folder))
    ours, theirs, naive = [], [], []
    for _ in range(args.runs):  # interleaved, so load from neighbours on the machine hits all alike
        ours.append(run_child(_OURS, str(folder)))
        theirs.append(run_child(_SITK, str(folder)))
        if not args.skip_naive:
            naive.append(run_child(_NAIVE, str(folder)))

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(
        f"{'reader':<22}{'process s':>11}{'CPU s':>8}{'import s':>10}{'load s':>9}   (median of {args.runs})"
    )
    readers = [("engine.io.open_study", ours), ("SimpleITK", theirs)] + (
        [("naive pydicom loop", naive)] if naive else []
    )
    for name, rows in readers:
        print(
            f"{name:<22}{med(rows, 'process_s'):>11.3f}{med(rows, 'cpu_s'):>8.3f}"
            f"{med(rows, 'import_s'):>10.3f}{med(rows, 'load_s'):>9.3f}"
        )
    ratios = {key: med(ours, key) / med(theirs, key) for key in ("process_s", "cpu_s", "load_s")}
    print(
        f"ratio ours/SimpleITK: whole process {ratios['process_s']:.2f}x (CPU {ratios['cpu_s']:.2f}x), "
        f"load only {ratios['load_s']:.2f}x (goal <= 0.8)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
