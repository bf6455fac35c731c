"""packaging/constraints.txt pins every distribution that setup installs (a new upstream release once broke the
installer's selftest: transformers 5.25 began importing `kernels`, whose data file PyInstaller left out)."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "packaging" / "constraints.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"not an exact pin: {line!r}"
            out[canonical(name)] = version
    return out


def requirement_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {canonical(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in reqs}


def test_every_requirement_is_pinned_and_torch_is_the_local_cpu_wheel():
    pinned = pins()
    assert pinned["torch"] == "2.13.0"  # never a local "+cpu" label and never a CUDA build
    assert requirement_names() - set(pinned) == set()
    assert "speechct" not in pinned  # the project itself is installed editable, not pinned


@pytest.mark.skipif(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"),
                    reason="the pins are for CPython 3.11 on x86_64 (the Makefile installs ranges elsewhere)")
def test_the_venv_holds_the_pinned_versions():
    """What the tests run on is what the pins say (a drifted venv: `make setup`, or `make lock` on purpose)."""
    drifted = {}
    for name, version in pins().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific or not installed in this venv
        if have.split("+")[0] != version:
            drifted[name] = (have, version)
    assert drifted == {}, (f"installed != pinned (have, pinned): {drifted}; `make setup` installs the pins, "
                           "`make lock` re-pins after a deliberate upgrade")
