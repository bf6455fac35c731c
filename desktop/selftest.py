"""``speechct-app --selftest``: open the window offscreen, index the samples into a temporary
library, load the sample study, render each view to PNG and check its structure, run one
dictation from the sample's WAV through the real recording path, check the results; exit 0/1."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtGui import QImage

from .events import process_events
from .panels.findings import UNCHECKED_COLOUR
from .panels.studies import sample_studies
from .viewer.presets import LUNG


def wait_for(signal, timeout_s: float, app, fail_signal=None):
    """Run the event loop until ``signal`` fires (returns its args), ``fail_signal`` fires or the
    timeout passes (both return None)."""
    got = []
    loop = QEventLoop()

    def hit(*args):
        got.append(args)
        loop.quit()

    signal.connect(hit)
    if fail_signal is not None:
        fail_signal.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(hit)
    if fail_signal is not None:
        fail_signal.disconnect(loop.quit)
    return got[0] if got else None


def save_rgb(rgb: np.ndarray, path: Path) -> None:
    QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.shape[1] * 3, QImage.Format.Format_RGB888).save(str(path))


def axial_contrast(viewer) -> dict[str, float]:
    """Median screen grey (0..255) of lung, soft-tissue and outside-air voxels on the axial view."""
    view, vol, st = viewer.views["axial"], viewer.volume, viewer.state
    img = view.snapshot().astype(float).mean(axis=2)
    h, w = img.shape
    hu = vol.array[st.slice_index("axial")]
    inv = np.linalg.inv(vol.affine_lps())
    out = {"lung": [], "tissue": [], "air": []}
    body = hu > -300
    for y in range(h // 10, h - h // 10, 8):
        for x in range(w // 10, w - w // 10, 8):
            i, j = (int(round(c)) for c in (inv @ np.r_[view.world_at(x, y), 1.0])[:2])
            if not (0 <= i < hu.shape[1] and 0 <= j < hu.shape[0]):
                continue
            rows = np.flatnonzero(body[:, i])
            v = hu[j, i]
            if v < -950 and (rows.size == 0 or j < rows[0] or j > rows[-1]):
                out["air"].append(img[y, x])
            elif -950 <= v < -500:
                out["lung"].append(img[y, x])
            elif 0 < v < 100:
                out["tissue"].append(img[y, x])
    return {k: float(np.median(v)) if v else float("nan") for k, v in out.items()}


def run_selftest(window, app, out_dir: Path | None, timeout_s: float = 600.0) -> int:
    from engine.library import Library  # noqa: F401  (fail early if the engine is broken)

    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="speechct-selftest-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    t0 = time.perf_counter()

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            problems.append(what)

    samples = sample_studies()
    if not samples:
        print("FAIL no sample studies under assets/samples", flush=True)
        return 1
    # 1. a library holding the other samples, so similar studies can appear
    if window.engine_info is None and window.last_error is None:
        wait_for(window.service.ready, timeout_s, app, fail_signal=window.errorShown)
    if window.engine_info is None:
        print(f"FAIL engine: {window.last_error}", flush=True)
        return 1
    window.index_studies([p for p in samples[1:]])
    check(wait_for(window.libraryIndexed, timeout_s, app, window.errorShown) is not None, f"indexed {len(samples) - 1} sample studies")
    # 2. the sample study and its findings
    window.open_study(str(samples[0]))
    got = wait_for(window.findingsShown, timeout_s, app, window.errorShown)
    check(got is not None, f"findings shown for {samples[0].parent.name} ({window.last_error or 'no error'})")
    if got is None:
        return 1
    check(window.findings.table.rowCount() == 18, "18 findings listed")
    probs = [f.probability for f in window.findings.findings]
    check(probs == sorted(probs, reverse=True), "findings ranked by probability")
    weak = set(window.analysis.unchecked or ())
    table = window.findings.table
    greyed = {f.label for row, f in enumerate(window.findings.findings)
              if table.item(row, 0).foreground().color() == UNCHECKED_COLOUR}
    check(greyed == weak, f"the {len(weak)} findings the image model is weak on are greyed before any dictation")
    window.findings.grab().save(str(out_dir / "findings-before-dictation.png"))
    # 3. each view to PNG, with structure checks
    viewer = window.viewer
    viewer.state.apply_preset(LUNG)
    for name, rgb in viewer.snapshots().items():
        save_rgb(rgb, out_dir / f"{name}.png")
        check(rgb.std() > 10, f"{name} view rendered ({out_dir / (name + '.png')}, grey std {rgb.std():.0f})")
    c = axial_contrast(viewer)
    check(c["air"] < c["lung"] < c["tissue"] and c["tissue"] > 180,
          f"axial lung window: air {c['air']:.0f} < lung {c['lung']:.0f} < soft tissue {c['tissue']:.0f}")
    # 4. one dictation from the sample's WAV through the recorder
    wav = samples[0].parent / "dictation.wav"
    window.dictation.begin()
    source = window.dictation.recorder.source
    while not getattr(source, "finished", None) or not source.finished.is_set():
        process_events()
        time.sleep(0.01)
    window.dictation.end()
    got = wait_for(window.dictationShown, timeout_s, app, window.errorShown)
    check(got is not None, f"dictation {wav.name} processed ({window.last_error or 'no error'})")
    if got is not None:
        a = got[0].analysis
        check(a.speech_embedding is not None and abs(np.linalg.norm(a.speech_embedding) - 1) < 1e-3,
              "speech embedding is a unit vector")
        check(a.dictation is None or len(a.dictation) == 18, "dictation status for 18 findings")
        check(a.similar is not None and len(a.similar) >= 1, f"similar studies listed ({len(a.similar or [])})")
        check(Path(got[0].audio_path).is_file(), f"dictation audio kept at {got[0].audio_path}")
    window.screenshot().save(str(out_dir / "main-window.png"))
    print(f"{'PASS' if not problems else 'FAIL'}: selftest in {time.perf_counter() - t0:.1f} s, PNGs in {out_dir}",
          flush=True)
    return 0 if not problems else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run: python -m desktop.app --selftest")
