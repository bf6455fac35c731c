"""Run pending Qt events from Python without PySide6 6.12's reference leak.

PySide6 6.12.0's static ``QCoreApplication.processEvents()`` and ``sendPostedEvents()`` drop one
reference to ``None`` per call. On Python 3.11, where ``None`` is not immortal, a wait loop of a few
thousand calls (a 3D render awaited in 5 ms steps, a scripted session) ends the process with "Fatal
Python error: none_dealloc". A ``QEventLoop`` instance's ``processEvents`` does the same work without
the leak, so every wait loop of the desktop, its self-test and its bench goes through here
(``tests/desktop/test_events.py`` measures it and keeps the static call out of the code).
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QEventLoop

_loops = threading.local()


def process_events() -> None:
    """Process the calling thread's pending events once (as ``QCoreApplication.processEvents()``)."""
    loop = getattr(_loops, "loop", None)
    if loop is None:
        loop = _loops.loop = QEventLoop()
    loop.processEvents()
