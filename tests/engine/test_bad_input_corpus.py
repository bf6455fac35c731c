"""The named bad-input corpus (``tests/engine/bad_corpus.py``) through the real command line, each run
in a forked worker with a 30 s limit and its peak RSS measured (``tests/engine/forked.py``).

Per run: it ends within 30 s and 2 GB; exit 0, or exit 2 with exactly one ``speechct: error:`` line on
stderr that names the input; never a traceback, never an "unexpected" error (the CLI's last resort,
which means an input got past every check). Per case: its expected outcome and message. Studies go
through ``info`` and ``rank``, which must agree.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from engine.errors import one_line

from . import forked
from .bad_corpus import CASES
from .tiny_bundle import tiny_bundle_path

LIMIT_S = 30.0
LIMIT_RSS_MB = 2048.0
#: rank alone may refuse a volume its model grid cannot hold (a spec matter, not a validation one)
RANK_ONLY = ("has no voxels left on axis",)

_stats: dict[str, list] = {"seconds": [], "rss": []}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus-env")
    started = time.perf_counter()
    forked.run_cli(["--help"], limit_s=120)  # starts the fork server (imports the engine once)
    _stats["startup"] = time.perf_counter() - started
    return {"SPEECHCT_BUNDLE": str(tiny_bundle_path()), "SPEECHCT_EMBEDDING_CACHE": str(folder / "emb"),
            "HOME": str(folder)}


def test_corpus_size_and_spread():
    counts = Counter(c.category for c in CASES)
    assert len(CASES) >= 150, counts
    assert set(counts) == {"dicom", "nifti", "audio", "bundle", "library", "path"}, counts
    assert len({c.name for c in CASES}) == len(CASES)


def _check_run(case, argv, outcome, where) -> None:
    shown = " ".join(str(a) for a in argv)
    assert not outcome.timed_out, f"{case.name}: `{shown}` still running after {LIMIT_S:.0f} s"
    assert outcome.max_rss_mb < LIMIT_RSS_MB, f"{case.name}: `{shown}` peaked at {outcome.max_rss_mb:.0f} MB"
    assert "Traceback" not in outcome.err, f"{case.name}: `{shown}`:\n{outcome.err[-3000:]}"
    assert "unexpected" not in outcome.err, f"{case.name}: `{shown}`: {outcome.err}"
    assert outcome.code in (0, 2), f"{case.name}: `{shown}` exit {outcome.code}: {outcome.err[-2000:]}"
    if outcome.code == 2:
        errors = [line for line in outcome.lines() if line.startswith("speechct: error: ")]
        others = [line for line in outcome.lines() if not line.startswith("speechct: ")]
        assert len(errors) == 1 and outcome.err.endswith("\n") and not others, f"{case.name}: {outcome.err}"
        assert one_line(str(where), 0) in errors[0], f"{case.name}: the error does not name {where}: {errors[0]}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, env, tmp_path):
    built = case.build(tmp_path)
    argvs = [[str(a) for a in argv] for argv in built["runs"]]
    # side by side when they cannot disturb each other (study reads); library cases write: in turn
    if case.category == "library":
        results = [forked.run_cli(argv, env=env, limit_s=LIMIT_S) for argv in argvs]
    else:
        results = forked.run_clis(argvs, env=env, limit_s=LIMIT_S)
    outcomes = list(zip(argvs, results))
    for argv, outcome in outcomes:
        _stats["seconds"].append(outcome.seconds)
        _stats["rss"].append(outcome.max_rss_mb)
        _check_run(case, argv, outcome, built["where"])
    codes = [o.code for _, o in outcomes]
    if case.expect == "error":
        assert any(c == 2 for c in codes), f"{case.name}: expected an error, got {codes}"
        if case.study:
            assert all(c == 2 for c in codes), f"{case.name}: info and rank disagree: {codes}"
        for _, o in outcomes:
            if o.code == 2:
                for fragment in case.fragments:
                    assert fragment in o.err, f"{case.name}: {fragment!r} not in {o.err}"
    elif case.expect == "ok":
        assert codes[0] == 0, f"{case.name}: {outcomes[0][1].err}"
        for fragment in case.fragments:
            assert any(fragment in o.out + o.err for _, o in outcomes), f"{case.name}: no {fragment!r}"
    if case.study:
        (_, info), (_, rank) = outcomes[:2]
        if info.code == 2:
            assert rank.code == 2 and rank.err == info.err, f"{case.name}: info {info.err!r} vs rank {rank.err!r}"
        elif rank.code == 2:
            assert any(s in rank.err for s in RANK_ONLY), f"{case.name}: info ok, rank: {rank.err}"


def test_report_corpus_timing():
    """Prints the totals the README quotes (run with -s)."""
    if _stats["seconds"]:
        print(f"\ncorpus: {len(CASES)} cases, {len(_stats['seconds'])} runs, worker start "
              f"{_stats.get('startup', 0):.1f} s, runs {sum(_stats['seconds']):.1f} s in all, slowest "
              f"{max(_stats['seconds']):.2f} s, peak RSS {max(_stats['rss']):.0f} MB")
