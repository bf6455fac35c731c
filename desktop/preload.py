"""Start importing the engine (torch and the model code) in a thread the moment the app launches.

Importing torch is the longest single step before a study's findings can be made, and it is Python
work that holds the interpreter lock: begun at launch, it overlaps the GUI's own imports and the
window's construction instead of starting after them. Nothing here imports Qt or torch itself, so
this module is cheap to import first. ``EngineService.engine`` imports ``engine.runtime`` again; that
import waits for this one (Python's per-module import lock) or returns at once when it is done.

Two parts of that import would hold the interpreter lock for long stretches, which the GUI thread
would spend frozen (docs/performance.md): loading torch's shared libraries (their static
constructors run inside ``dlopen``, which Python's import calls with the lock held), and the full
garbage collections that the import's many new objects trigger. So the libraries are loaded first
through libc's ``dlopen`` called by ctypes, which releases the lock (torch's import then finds them
loaded), and the collector is paused for the import; what was imported is then frozen out of later
collections (``gc.freeze``), since modules and their functions live as long as the app.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

ENGINE_MODULE = "engine.runtime"

#: torch's libraries in load order (each one's dependencies first); ``libtorch_global_deps`` is
#: opened with RTLD_GLOBAL as torch's ``_load_global_deps`` opens it, the rest as a dependency of
#: ``torch._C`` is (RTLD_LOCAL). ``libtorch_python`` is left to the import: it is small.
TORCH_LIBRARIES = (("libtorch_global_deps.so", True), ("libc10.so", False), ("libtorch_cpu.so", False),
                   ("libtorch.so", False))


def torch_library_paths() -> list[tuple[Path, bool]]:
    """The torch libraries to load ahead of ``import torch`` and whether each is global; none when
    torch is already imported, is not installed as a Linux wheel lays it out, or when the
    interpreter's dlopen flags were changed (torch's ``TORCH_USE_RTLD_GLOBAL`` route)."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules or os.getenv("TORCH_USE_RTLD_GLOBAL"):
        return []
    if sys.getdlopenflags() != os.RTLD_NOW:
        return []
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin:
        return []
    lib = Path(spec.origin).parent / "lib"
    paths = [(lib / name, glob) for name, glob in TORCH_LIBRARIES]
    return paths if all(p.is_file() for p, _ in paths) else []


def open_library(path: Path, glob: bool = False) -> bool:
    """``dlopen`` one library (RTLD_NOW, RTLD_GLOBAL when ``glob``) with the interpreter lock released;
    False when it could not be loaded. The handle stays open for the process's life, as torch's do."""
    try:
        dlopen = ctypes.CDLL(None).dlopen  # a CDLL's functions run with the interpreter lock released
    except (OSError, AttributeError):
        return False
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return bool(dlopen(os.fsencode(path), os.RTLD_NOW | (os.RTLD_GLOBAL if glob else 0)))


def load_torch_libraries() -> list[str]:
    """Load torch's libraries ahead of its import (:func:`open_library`); returns the ones loaded.
    Any failure stops here quietly: torch's own import then loads them (and reports what is wrong)."""
    loaded = []
    for path, glob in torch_library_paths():
        if not open_library(path, glob):
            break
        loaded.append(str(path))
    return loaded


def _import_engine() -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        load_torch_libraries()
        importlib.import_module(ENGINE_MODULE)
    except Exception:  # the engine's build imports it again and reports the error (one line)
        pass
    finally:
        if enabled:
            gc.freeze()  # what the app imported lives as long as it: later collections skip it
            gc.enable()


def start_engine_import() -> threading.Thread:
    """Import ``engine.runtime`` in a daemon thread; returns the thread (already started)."""
    thread = threading.Thread(target=_import_engine, name="engine-import", daemon=True)
    thread.start()
    return thread
