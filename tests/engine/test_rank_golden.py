"""``speechct rank --json`` on the three samples, compared to golden files captured with the installed
default bundle (``tests/fixtures/rank-golden/``): the redesign of issue 19 must not change the output.

Timings, the cache flag and the bundle's install path are left out of the comparison; probabilities are
compared to 1e-4 (float32 through Whisper differs by ~2e-6 between CPUs and thread counts;
a changed model or rule moves them by far more). The goldens belong to one bundle (its hash is in them): when the default bundle is
re-exported the test skips with that reason, and ``python -m tests.engine.test_rank_golden`` rewrites them
(check the diff before committing it).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from engine.cli import main

ABS_TOL = 1e-4

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "rank-golden"
BUNDLE = ROOT / "assets" / "models" / "default"
STUDIES = ("study-001", "study-002", "study-003")
IGNORED = ("timings_ms", "cached")


def rank_json(study: str) -> dict:
    """The rank JSON of one sample, run in this process from the repository root (relative paths)."""
    import contextlib
    import io
    import os

    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            code = main(["rank", "--ct", f"assets/samples/{study}/dicom",
                         "--audio", f"assets/samples/{study}/dictation.wav", "--json",
                         "--bundle", str(BUNDLE)])
    finally:
        os.chdir(cwd)
    assert code == 0
    return json.loads(out.getvalue())


def comparable(doc: dict) -> dict:
    doc = {k: v for k, v in doc.items() if k not in IGNORED}
    doc["bundle"] = {k: v for k, v in doc["bundle"].items() if k != "path"}
    return doc


def assert_close(got, want, where="$"):
    if isinstance(want, float) and isinstance(got, (float, int)) and not isinstance(got, bool):
        assert math.isclose(got, want, rel_tol=0, abs_tol=ABS_TOL), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    monkeypatch.delenv("SPEECHCT_BUNDLE", raising=False)


@pytest.mark.parametrize("study", STUDIES)
def test_rank_json_matches_golden(study):
    want = json.loads((GOLDEN / f"{study}.json").read_text())
    from engine.weights.bundle import load_bundle

    if load_bundle(BUNDLE, check_hashes=False, check_backbone=False).hash != want["bundle"]["hash"]:
        pytest.skip("the default bundle changed since the goldens were captured: "
                    "rewrite them with `python -m tests.engine.test_rank_golden`")
    got = comparable(rank_json(study))
    assert_close(got, want)


if __name__ == "__main__":  # rewrite the goldens from the installed bundle
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in STUDIES:
        (GOLDEN / f"{name}.json").write_text(json.dumps(comparable(rank_json(name)), indent=2) + "\n")
        print("wrote", GOLDEN / f"{name}.json", file=sys.stderr)


def _documented_schema() -> dict[str, str]:
    """Top-level key -> its text in the one written-out schema (engine/commands/rank.py's docstring)."""
    import re

    import engine.commands.rank as rank

    doc = rank.__doc__
    block = doc[doc.index("{\n"):doc.index("\n    }\n")]
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines()[1:]:
        m = re.match(r'^      "(\w+)":', line)
        if m:
            current = m.group(1)
            sections[current] = ""
        if current:
            sections[current] += line + "\n"
    return sections


def test_the_documented_schema_is_the_output():
    """Every key the output has is written out in the schema, in its order, and nothing more."""
    doc = _documented_schema()
    got = json.loads((GOLDEN / "study-002.json").read_text())
    assert [k for k in doc if k not in IGNORED] == list(got)
    for key, value in got.items():
        items = value if isinstance(value, list) else [value]
        for item in items[:1]:
            if isinstance(item, dict):
                for sub in item:
                    assert f'"{sub}"' in doc[key], f"{key}.{sub} is not in the documented schema"
    assert '"timings_ms"' in doc["timings_ms"] and all(f'"{k}"' in doc["timings_ms"] for k in (
        "load_study", "load_models", "encode_ct", "encode_speech", "rank", "dictation", "similar", "total"))
