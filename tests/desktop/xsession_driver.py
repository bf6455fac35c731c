"""The real app on an X server, driven by X events (xdotool) and a PulseAudio null-sink microphone.

Run by ``tests/desktop/test_xsession.py`` in a child process (one QApplication per process, on
``xcb``, not offscreen) with DISPLAY and PULSE_* set. The app is built as ``speechct-app`` builds it
(default bundle, the first sample opened at launch); every step is sent as X input (XTEST: mouse,
wheel, keys, held F4 with the server's key auto-repeat on) and checked by pixels grabbed from the
X screen or by widget state. Prints one JSON line: the steps (name, ok, detail, seconds since
launch) and the screenshots written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PySide6.QtCore import QEventLoop, QPoint, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

STEPS: list[dict] = []


def step(name: str, ok: bool, detail: str = "") -> bool:
    STEPS.append({"step": name, "ok": bool(ok), "detail": detail, "t": round(time.perf_counter() - T0, 2)})
    print(("ok   " if ok else "FAIL ") + f"{name}: {detail}", file=sys.stderr, flush=True)
    return ok


def spin(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(int(ms), loop.quit)
    loop.exec()


def wait_until(cond, timeout_s: float, poll_ms: int = 20) -> bool:
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        if cond():
            return True
        spin(poll_ms)
    return bool(cond())


def xdo(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=20)


def centre_of(widget, fx: float = 0.5, fy: float = 0.5) -> QPoint:
    return widget.mapToGlobal(QPoint(int(widget.width() * fx), int(widget.height() * fy)))


def grab(widget) -> np.ndarray:
    """What the X screen shows where ``widget`` is: (rows, cols) grey."""
    p = widget.mapToGlobal(QPoint(0, 0))
    img = QGuiApplication.primaryScreen().grabWindow(0, p.x(), p.y(), widget.width(), widget.height()).toImage()
    img = img.convertToFormat(QImage.Format.Format_Grayscale8)
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return arr[:, : img.width()].astype(float)


def image_fill(grey: np.ndarray) -> float:
    """How much of the view the study covers along its limiting side (lung-window air is grey, the
    background black; a row or column counts when most of it is lit)."""
    lit = grey > 20
    rows, cols = np.flatnonzero(lit.mean(1) > 0.3), np.flatnonzero(lit.mean(0) > 0.3)
    if rows.size == 0 or cols.size == 0:
        return 0.0
    return max((cols[-1] - cols[0] + 1) / grey.shape[1], (rows[-1] - rows[0] + 1) / grey.shape[0])


def save_screen(window, path: Path) -> None:
    p = window.mapToGlobal(QPoint(0, 0))
    QGuiApplication.primaryScreen().grabWindow(0, p.x(), p.y(), window.width(), window.height()).save(str(path))


def images_within(window, seconds: float) -> tuple[bool, str]:
    """The three slice views show the study within ``seconds``, nobody touching them."""
    views = [window.viewer.views[n] for n in ("axial", "coronal", "sagittal")]
    ok = wait_until(lambda: all(image_fill(grab(v)) > 0.85 for v in views), seconds, poll_ms=50)
    return ok, ", ".join(f"{v.view} {image_fill(grab(v)):.0%}" for v in views)


def main() -> int:  # noqa: C901  (one scripted session, step by step)
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder for the screenshots")
    ap.add_argument("--work", required=True, help="scratch folder (library, recordings, settings)")
    ap.add_argument("--speech", required=True, help="a dictation WAV to play into the null sink")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])
    app.setApplicationName("SpeechCT")
    from desktop.main_window import MainWindow
    from desktop.panels.studies import sample_studies
    from desktop.settings import Settings

    samples = sample_studies()
    settings = Settings(library=str(work / "library"), recordings_dir=str(work / "recordings"), microphone="pulse")
    window = MainWindow(settings, cache_dir=work / "cache", save_settings=False)
    window.resize(1600, 1000)
    window.move(0, 0)
    window.show()
    opened = []
    window.studyOpened.connect(lambda v: opened.append(time.perf_counter()))
    findings = []
    window.findingsShown.connect(lambda a: findings.append(time.perf_counter()))
    dictations = []
    window.dictationShown.connect(lambda r: dictations.append(r))
    indexed = []
    window.libraryIndexed.connect(indexed.append)
    window.open_study(str(samples[0]))  # as speechct-app does with no PATH
    xdo("windowfocus", "--sync", str(int(window.winId())))
    recordings = Path(settings.recordings())

    # 1. the first study: images without interaction, then findings
    if not step("study opens", wait_until(lambda: bool(opened), 60), f"{(opened or [0])[0] - T0:.1f} s"):
        return finish(window)
    ok, detail = images_within(window, 1.0)
    step("slice images within 1 s, untouched", ok, detail)
    step("findings shown", wait_until(lambda: bool(findings), 120),
         f"{(findings or [T0])[0] - T0:.1f} s after launch; {window.activity.text()}")
    window.index_studies(samples[1:])  # the library the similar studies come from (in a worker)

    # 2. scroll: the wheel over the axial view, as X button 4 clicks
    ax, st = window.viewer.views["axial"], window.viewer.state
    before_px, before = grab(ax), st.slice_index("axial")
    c = centre_of(ax, 0.5, 0.62)
    xdo("mousemove", str(c.x()), str(c.y()))
    xdo("click", "--repeat", "5", "--delay", "40", "4")
    moved = wait_until(lambda: st.slice_index("axial") == before + 5, 5)
    spin(300)
    step("wheel scrolls 5 slices", moved and np.abs(grab(ax) - before_px).mean() > 1.0,
         f"slice {before + 1} -> {st.slice_index('axial') + 1}")

    # 3. window/level: left-drag to the right widens the window
    w0 = st.window
    xdo("mousedown", "1")
    for dx in range(10, 70, 10):
        xdo("mousemove", str(c.x() + dx), str(c.y()))
    xdo("mouseup", "1")
    step("left-drag widens the window", wait_until(lambda: st.window > w0 + 100, 3), f"W {w0:.0f} -> {st.window:.0f}")
    xdo("key", "1")  # back to the lung preset
    wait_until(lambda: st.preset_name == "Lung", 3)

    # 4. measure: `m`, then drag across the right lung
    xdo("key", "m")
    wait_until(lambda: st.tool == "ruler", 3)
    a, b = centre_of(ax, 0.28, 0.45), centre_of(ax, 0.45, 0.45)
    xdo("mousemove", str(a.x()), str(a.y()))
    xdo("mousedown", "1")
    for f in np.linspace(0, 1, 6)[1:]:
        xdo("mousemove", str(int(a.x() + f * (b.x() - a.x()))), str(a.y()))
    xdo("mouseup", "1")
    got = wait_until(lambda: len(st.measurements) == 1 and st.measurements[0].length_mm > 10, 3)
    length = st.measurements[0].length_mm if st.measurements else 0.0
    expected = (b.x() - a.x()) / ax.pixels_per_mm()
    step("ruler measures", got and abs(length - expected) < 0.05 * expected,
         f"{length:.1f} mm for {b.x() - a.x()} px ({expected:.1f} mm expected)")
    xdo("key", "w")
    xdo("mousemove", str(centre_of(ax, 0.7, 0.8).x()), str(centre_of(ax, 0.7, 0.8).y()))
    spin(300)
    step("HU under the mouse", "HU" in ax.overlay.corner_text(1), ax.overlay.corner_text(1).split("\n")[0])
    step("library indexed", wait_until(lambda: bool(indexed), 120), f"{(indexed or [0])[0]} studies")

    # 5. dictate: hold F4 with X auto-repeat on while the dictation plays into the microphone
    xdo("windowfocus", "--sync", str(int(window.winId())))
    wavs_before = set(recordings.glob("*.wav")) if recordings.is_dir() else set()
    xdo("keydown", "F4")
    rec_seen = wait_until(lambda: window.indicator.recording, 3)
    player = subprocess.Popen(["paplay", "--device=vsink", args.speech])
    indicator_text = ""
    while player.poll() is None:
        spin(100)
        indicator_text = window.indicator.text.text() or indicator_text
    spin(400)
    step("recording indicator above the images", rec_seen and "REC" in indicator_text, indicator_text)
    held = window.dictation.kind == "dictation"
    xdo("keyup", "F4")
    got = wait_until(lambda: bool(dictations), 150)
    new = set(recordings.glob("*.wav")) - wavs_before
    step("held F4 with auto-repeat: one recording, analysed", held and got and len(new) == 1,
         f"{len(new)} WAV; {window.dictation.state_label.text()}")
    transcripts = []
    window.transcriptShown.connect(transcripts.append)
    got = wait_until(lambda: bool(transcripts), 90)
    step("transcript after the results, in its own thread", got and len(transcripts[0].split()) > 5,
         (transcripts or [""])[0][:80])
    step("all findings fit without scrolling", window.findings.fits_without_scrolling(),
         f"{window.findings.table.rowCount()} rows")
    spin(500)
    save_screen(window, out / "main-window.png")
    check_header = window.findings.header.text()

    # 6. silence: a 2 s hold with nothing playing says so and keeps the check
    xdo("keydown", "F4")
    spin(2000)
    xdo("keyup", "F4")
    wait_until(lambda: "No speech" in window.dictation.state_label.text(), 5)
    spin(300)
    step("silence is not a dictation", "No speech heard" in window.dictation.state_label.text()
         and window.findings.header.text() == check_header and len(dictations) == 1,
         window.dictation.state_label.text())

    # 7. compare: click the first similar study; linked scrolling
    sim = window.similar.list
    if step("similar studies listed", sim.count() > 0, f"{sim.count()}"):
        r = sim.visualItemRect(sim.item(0))
        p = sim.viewport().mapToGlobal(r.center())
        xdo("mousemove", str(p.x()), str(p.y()))
        xdo("click", "1")
        if step("prior opens beside", wait_until(lambda: window.compare is not None, 60),
                window.compare.title.text() if window.compare else ""):
            ok, _ = images_within(window, 1.0)
            cmp_views = [window.compare.views[n] for n in ("axial", "coronal", "sagittal")]
            ok = wait_until(lambda: all(image_fill(grab(v)) > 0.85 for v in cmp_views), 1.0)
            step("prior's images within 1 s", ok, ", ".join(f"{image_fill(grab(v)):.0%}" for v in cmp_views))
            ax = window.viewer.views["axial"]
            pst, cst = window.compare.state, window.viewer.state
            p0, c0 = pst.slice_index("axial"), cst.slice_index("axial")
            c = centre_of(ax)
            xdo("mousemove", str(c.x()), str(c.y()))
            xdo("click", "--repeat", "3", "--delay", "40", "5")
            wait_until(lambda: cst.slice_index("axial") == c0 - 3, 3)
            step("linked scrolling", pst.slice_index("axial") == p0 - 3,
                 f"current {c0} -> {cst.slice_index('axial')}, prior {p0} -> {pst.slice_index('axial')}; "
                 f"{window.link_label.text()}")
            spin(500)
            save_screen(window, out / "comparison.png")

    # 8. switch studies: double-click the third sample in the study list
    lst = window.studies.list
    item = next(lst.item(i) for i in range(lst.count())
                if lst.item(i).data(Qt.ItemDataRole.UserRole)[0] == str(samples[2]))
    p = lst.viewport().mapToGlobal(lst.visualItemRect(item).center())
    n_open, n_find = len(opened), len(findings)
    t = time.perf_counter()
    xdo("mousemove", str(p.x()), str(p.y()))
    xdo("click", "--repeat", "2", "--delay", "80", "1")
    switched = wait_until(lambda: len(opened) > n_open, 60)
    step("study switch by double-click", switched and window.compare is None and len(opened) == n_open + 1,
         f"{(opened[-1] - t) if switched else -1:.1f} s to read")
    ok, detail = images_within(window, 1.0)
    step("switched study's images within 1 s, untouched", ok, detail)
    step("switched study's findings", wait_until(lambda: len(findings) > n_find, 120),
         f"{(findings[-1] - t) if len(findings) > n_find else -1:.1f} s after the double-click")
    spin(500)
    save_screen(window, out / "study-switch.png")
    return finish(window)


def finish(window) -> int:
    try:
        window.close()
    except Exception:  # report, do not hide, a failure to close
        step("window closes", False, traceback.format_exc().splitlines()[-1])
    print(json.dumps({"steps": STEPS, "seconds": round(time.perf_counter() - T0, 1)}), flush=True)
    return 0 if all(s["ok"] for s in STEPS) else 1


def run() -> int:
    try:
        return main()
    except Exception:  # a step that could not even run: report it like the others
        step("driver", False, traceback.format_exc()[-1500:])
        print(json.dumps({"steps": STEPS, "seconds": round(time.perf_counter() - T0, 1)}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(run())
