"""How the build cuts a selftest off the network.

Two layers, both used when available:
- ``unshare -rn`` (a new user + network namespace: only a down loopback exists), which catches native
  code as well; it needs unprivileged user namespaces or root;
- ``SPEECHCT_DENY_NETWORK=1``, which the bundle's runtime hook (``rthooks/speechct_offline.py``)
  turns into refused IP sockets and DNS inside the frozen Python, and which works everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV_DENY = "SPEECHCT_DENY_NETWORK"


def unshare_prefix() -> list[str]:
    """``["unshare", "-rn"]`` when that works here (probed by running ``true`` in it), else ``[]``."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    try:
        probe = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [exe, "-rn"] if probe.returncode == 0 else []


def clean_env(home: Path, *, offscreen: bool = True, deny_network: bool = True,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: no venv on PATH, no PYTHONPATH, HOME (and so platformdirs' user folders)
    in ``home``, a private runtime dir, Qt offscreen unless a display is wanted."""
    home = Path(home)
    runtime = home / ".runtime"
    tmp = home / ".tmp"
    for folder in (home, runtime, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(tmp),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    if offscreen:
        env["QT_QPA_PLATFORM"] = "offscreen"
    if deny_network:
        env[ENV_DENY] = "1"
    env.update(extra or {})
    return env


def default_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="speechct-home-"))


def env_is_clean(env: dict[str, str]) -> list[str]:
    """What in ``env`` could let a frozen app see the build's Python (empty list: nothing)."""
    problems = [name for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH") if name in env]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv and venv in env.get("PATH", ""):
        problems.append("PATH holds the venv")
    if ".venv" in env.get("PATH", ""):
        problems.append("PATH holds a .venv")
    return problems
