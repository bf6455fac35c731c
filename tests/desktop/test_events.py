"""desktop.events.process_events: the wait loops' way to run pending events, without PySide6 6.12's
leak of one ``None`` reference per static ``processEvents()`` call (fatal after a few thousand calls
on Python 3.11)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from desktop.events import process_events

ROOT = Path(__file__).resolve().parents[2]


def test_process_events_keeps_none_references(qapp):
    before = sys.getrefcount(None)
    for _ in range(2000):
        process_events()
    # the static QCoreApplication.processEvents() loses 2000 here; allow unrelated noise
    assert sys.getrefcount(None) - before > -50


def test_process_events_runs_posted_work(qapp):
    from PySide6.QtCore import QTimer

    hit = []
    QTimer.singleShot(0, lambda: hit.append(1))
    for _ in range(50):
        process_events()
        if hit:
            break
    assert hit == [1]


def test_no_wait_loop_calls_the_leaking_static_binding():
    pattern = re.compile(r"\b(?:app|QCoreApplication|QApplication|qapp)\.(?:processEvents|sendPostedEvents)\(")
    offenders = []
    for folder in ("desktop", "bench", "tests", "packaging"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("test_events.py", "events.py"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, f"use desktop.events.process_events instead: {offenders}"
