"""Run ``speechct`` (or any picklable function) in a child forked from a preloaded fork server, with a
wall-clock limit and the child's peak RSS (``ru_maxrss``): the bad-input corpus and the fuzz harness
check that every input ends, within time and memory, however hostile it is.

The fork server imports the engine (torch included) once; each case is a fresh fork of it, so a case
costs milliseconds plus its own work, a hang is killed at the limit, and a crash or a leak in one case
never touches the next. (Forking the pytest process itself would be unsafe: its torch thread pool.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ["engine.cli", "engine.io", "engine.io.dicom", "engine.io.nifti", "engine.runtime", "engine.library",
           "engine.audio", "engine.speech_presence", "engine.weights.bundle", "engine.commands.info",
           "engine.commands.rank", "engine.commands.index", "engine.commands.search",
           "engine.commands.bundle_info", "pydicom", "nibabel", "soundfile", "scipy.ndimage",
           "transformers.models.whisper.feature_extraction_whisper"]

_context = None


def context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


@dataclass
class Outcome:
    code: int | None  # exit code; None when killed at the time limit
    out: str
    err: str
    seconds: float
    max_rss_mb: float  # peak resident memory of the child (ru_maxrss)
    timed_out: bool

    def lines(self) -> list[str]:
        return self.err.splitlines()


def _child(target, args, env: dict, folder: str) -> None:
    out = os.open(os.path.join(folder, "out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(os.path.join(folder, "err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ.update(env)
    code = 70
    try:
        code = int(target(*args) or 0)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - reported as a traceback on stderr, which the tests refuse
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        Path(folder, "result.json").write_text(json.dumps({"code": code, "rss_kb": rss_kb}))
        os._exit(0)


def cli(argv: list[str]) -> int:
    """``speechct ARGV`` in this process (the fork's), with torch on one thread."""
    import torch

    torch.set_num_threads(1)
    from engine.cli import main

    return main([str(a) for a in argv])


def run_many(calls: list[tuple], *, env: dict | None = None, limit_s: float = 30.0) -> list[Outcome]:
    """Run ``(target, *args)`` calls side by side, each in its own fork, each with its own limit."""
    with tempfile.TemporaryDirectory(prefix="speechct-case-") as tmp:
        running = []
        for i, (target, *args) in enumerate(calls):
            folder = os.path.join(tmp, str(i))
            os.mkdir(folder)
            proc = context().Process(target=_child, args=(target, args, dict(env or {}), folder))
            proc.start()
            running.append((proc, folder, time.perf_counter()))
        outcomes = []
        for proc, folder, started in running:
            proc.join(max(0.0, started + limit_s - time.perf_counter()))
            timed_out = proc.is_alive()
            if timed_out:
                proc.kill()
                proc.join(10)
            seconds = time.perf_counter() - started
            result_file = Path(folder, "result.json")
            result = json.loads(result_file.read_text()) if result_file.exists() else {"code": None, "rss_kb": 0}
            read = lambda name, f=folder: Path(f, name).read_text(errors="replace") if Path(f, name).exists() else ""  # noqa: E731
            outcomes.append(Outcome(None if timed_out else result["code"], read("out"), read("err"), seconds,
                                    result["rss_kb"] / 1024.0, timed_out))
        return outcomes


def run(target, *args, env: dict | None = None, limit_s: float = 30.0) -> Outcome:
    return run_many([(target, *args)], env=env, limit_s=limit_s)[0]


def run_cli(argv, *, env: dict | None = None, limit_s: float = 30.0) -> Outcome:
    return run(cli, [str(a) for a in argv], env=env, limit_s=limit_s)


def run_clis(argvs, *, env: dict | None = None, limit_s: float = 30.0) -> list[Outcome]:
    return run_many([(cli, [str(a) for a in argv]) for argv in argvs], env=env, limit_s=limit_s)
