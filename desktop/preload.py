"""Start importing the engine (torch and the model code) in a thread the moment the app launches.

Importing torch is the longest single step before a study's findings can be made, and it is Python
work that holds the interpreter lock: begun at launch, it overlaps the GUI's own imports and the
window's construction instead of starting after them. Nothing here imports Qt or torch itself, so
this module is cheap to import first. ``EngineService.engine`` imports ``engine.runtime`` again; that
import waits for this one (Python's per-module import lock) or returns at once when it is done.
"""

from __future__ import annotations

import importlib
import threading

ENGINE_MODULE = "engine.runtime"


def _import_engine() -> None:
    try:
        importlib.import_module(ENGINE_MODULE)
    except Exception:  # the engine's build imports it again and reports the error (one line)
        pass


def start_engine_import() -> threading.Thread:
    """Import ``engine.runtime`` in a daemon thread; returns the thread (already started)."""
    thread = threading.Thread(target=_import_engine, name="engine-import", daemon=True)
    thread.start()
    return thread
