"""Build, archive and selftest the SpeechCT application bundle (``make package`` runs this).

    python packaging/build.py [--variant cpu|cuda] [--skip-build] [--no-archive] [--no-selftest]
                              [--first-window] [--dist DIR] [--work DIR]

Steps, each timed:
1. ``pyinstaller packaging/speechct.spec`` into ``<dist>/speechct/`` (work files under ``<work>``);
2. Linux extras (icon, ``.desktop`` entry and its installer) and ``MANIFEST.sha256`` (every file);
3. ``<dist>/speechct-<version>-linux-<arch>[-cuda].tar.gz``;
4. replace ``<dist>/speechct/`` by the archive unpacked (so the disk holds one copy of the app, not three)
   and, in a clean environment (no venv on PATH, no
   PYTHONPATH, HOME a fresh ``<work>/selftest-home``, removed afterwards) with the network cut off (``unshare -rn`` where allowed, and
   always the bundle's socket guard): check the manifest, run ``speechct selftest --json`` (bundle
   hashes, one CT and one speech encoding, the text tower) and ``speechct-app --selftest`` (imports,
   the sample study in all views rendered offscreen, one dictation). Any failure fails the build;
5. with ``--first-window`` and Xvfb present: the time from launch to the main window on a virtual
   display, first run (fresh HOME: includes converting the Whisper backbone) and second run.

Writes ``<work>/package-report.json`` (sizes, timings, checks) and prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bundle_contents  # noqa: E402
import first_window  # noqa: E402
import netguard  # noqa: E402

APP_NAME = "speechct"
MANIFEST = "MANIFEST.sha256"
SELFTEST_TIMEOUT_S = 900
STUDY_TIMEOUT_S = 60  # --first-window: how long to wait for the sample study after launch


class BuildError(RuntimeError):
    """A step failed; the message says which and why (the build exits 1)."""


def project_version(root: Path = ROOT) -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.MULTILINE)
    if match is None:
        raise BuildError("pyproject.toml has no version")
    return match.group(1)


def archive_name(version: str, variant: str, machine: str | None = None) -> str:
    machine = machine or platform.machine().lower()
    suffix = "" if variant == "cpu" else f"-{variant}"
    return f"{APP_NAME}-{version}-linux-{machine}{suffix}.tar.gz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="build.py", description="Build, archive and selftest the SpeechCT bundle.")
    p.add_argument("--variant", choices=bundle_contents.VARIANTS, default="cpu",
                   help="cpu (default): the venv's torch must be a CPU build; cuda: it must be a CUDA build")
    p.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "package",
                   help="PyInstaller work folder and report (default: build/package/)")
    p.add_argument("--skip-build", action="store_true", help="reuse <dist>/speechct/ as it is")
    p.add_argument("--no-archive", action="store_true", help="stop after the folder (no archive, no selftest)")
    p.add_argument("--no-selftest", action="store_true", help="archive but do not selftest (not for releases)")
    p.add_argument("--first-window", action="store_true",
                   help="also time the first window on a virtual display (needs Xvfb and xwininfo)")
    return p.parse_args(argv)


def check_torch_variant(variant: str) -> str:
    """The installed torch's build matches the variant (a CPU bundle never carries CUDA libraries)."""
    import torch

    cuda = torch.version.cuda
    if variant == "cpu" and cuda is not None:
        raise BuildError(f"--variant cpu but this torch ({torch.__version__}) is a CUDA {cuda} build; "
                         "install torch==2.13.0 (CPU) in the build venv, or pass --variant cuda")
    if variant == "cuda" and cuda is None:
        raise BuildError(f"--variant cuda but this torch ({torch.__version__}) is a CPU build; "
                         "build in a venv with a CUDA torch (packaging/README.md, 'CUDA variant')")
    return torch.__version__


def run_pyinstaller(variant: str, dist: Path, work: Path) -> None:
    try:
        import PyInstaller  # noqa: F401
    except ImportError as exc:
        raise BuildError("PyInstaller is not installed in this Python: pip install 'pyinstaller==6.22.*'") from exc
    cmd = [sys.executable, "-m", "PyInstaller", str(HERE / "speechct.spec"), "--noconfirm", "--log-level", "WARN",
           "--distpath", str(dist), "--workpath", str(work / "pyinstaller"), "--", "--variant", variant]
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise BuildError("PyInstaller failed (its log is above)")


def add_linux_extras(folder: Path) -> None:
    """Icon, .desktop template and the script that installs it with absolute paths."""
    shutil.copy2(ROOT / "assets" / "icons" / "speechct.png", folder / "speechct.png")
    for name in ("speechct.desktop", "install-desktop-entry.sh", "README.txt"):
        shutil.copy2(HERE / "linux" / name, folder / name)
    (folder / "install-desktop-entry.sh").chmod(0o755)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path) -> int:
    """``MANIFEST.sha256`` in ``sha256sum -c`` format over every regular file; returns the file count."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            lines.append(f"{sha256_file(path)}  {rel}")
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")
    return len(lines)


def verify_manifest(folder: Path) -> list[str]:
    """Files whose content differs from the manifest, or that are missing (empty list: all match)."""
    bad = []
    for line in (folder / MANIFEST).read_text().splitlines():
        digest, rel = line.split("  ", 1)
        path = folder / rel
        if not path.is_file():
            bad.append(f"missing {rel}")
        elif sha256_file(path) != digest:
            bad.append(f"changed {rel}")
    return bad


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def largest_parts(folder: Path, top: int = 8) -> list[tuple[str, int]]:
    """Biggest first-level folders of the bundle's contents (``_internal/<x>``), in bytes."""
    internal = folder / "_internal"
    sizes = {}
    for child in internal.iterdir():
        sizes[child.name] = folder_bytes(child) if child.is_dir() else child.lstat().st_size
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


def make_archive(folder: Path, target: Path, top: str) -> None:
    """``target`` (.tar.gz) holding ``folder`` as ``top/``; written beside and renamed when complete."""
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=top)
    os.replace(partial, target)


def run_logged(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {timeout:.0f} s)"
    elapsed = time.perf_counter() - start
    log.write_text(f"$ {' '.join(cmd)}\n{out}")
    return code, out, elapsed


def exe(folder: Path, name: str) -> Path:
    return folder / (f"{name}.exe" if sys.platform == "win32" else name)


def check_free_space(where: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < need:
        raise BuildError(f"{where}: {mib(free)} free, {what} needs {mib(need)}; free some space and run again")


def unpack_in_place_of(archive: Path, folder: Path) -> float:
    """Replace ``folder`` (the build) by ``archive`` unpacked, so what is selftested (and left in ``dist/``)
    is exactly what users unpack. The build is removed first: both copies at once (1.5 GB each) filled
    the CI machine's disk. Unpacks beside ``folder`` and renames when complete; returns seconds."""
    size = folder_bytes(folder) if folder.exists() else 3 * archive.stat().st_size
    shutil.rmtree(folder, ignore_errors=True)
    check_free_space(folder.parent, size + 100 * 2**20, "unpacking the archive")
    t = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="tar")
        (top,) = [p for p in tmp.iterdir() if p.is_dir()]
        os.replace(top, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return round(time.perf_counter() - t, 1)


def selftest_archive(archive: Path, folder: Path, work: Path) -> dict:
    """Put ``archive`` unpacked where the build was and prove it works there, offline. Raises BuildError."""
    unpack_s = unpack_in_place_of(archive, folder)
    home = work / "selftest-home"
    shutil.rmtree(home, ignore_errors=True)
    try:
        return {"unpack_s": unpack_s, **selftest_folder(folder, work, home)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def selftest_folder(folder: Path, work: Path, home: Path) -> dict:
    """Manifest, ``speechct selftest --json`` and ``speechct-app --selftest`` run from ``folder`` in a
    clean environment with the network cut off; then the converted Whisper encoder's sha256 against
    the bundle's. Raises BuildError on the first failure (logs under ``work``)."""
    result: dict = {"network": None, "checks": {}}
    bad = verify_manifest(folder)
    result["checks"]["manifest"] = not bad
    if bad:
        raise BuildError(f"unpacked files differ from {MANIFEST}: {', '.join(bad[:5])}")
    prefix = netguard.unshare_prefix()
    result["network"] = "unshare -rn + socket guard" if prefix else "socket guard (unshare -rn not allowed here)"
    env = netguard.clean_env(home)
    problems = netguard.env_is_clean(env)
    if problems:
        raise BuildError(f"selftest environment is not clean: {problems}")

    code, out, elapsed = run_logged([*prefix, str(exe(folder, "speechct")), "selftest", "--json"], env,
                                    work / "selftest-engine.log", SELFTEST_TIMEOUT_S)
    result["engine_selftest_s"] = round(elapsed, 1)
    try:
        report = json.loads(out[out.index("{"):out.rindex("}") + 1])
    except ValueError:
        report = None
    inside = report is not None and Path(report["bundle"]["path"]).resolve().is_relative_to(folder.resolve())
    result["checks"]["engine"] = code == 0 and bool(report and report["ok"]) and inside
    if report is not None:
        result["engine_checks_ms"] = {c["name"]: c["ms"] for c in report["checks"]}
    if not result["checks"]["engine"]:
        why = "bundle loaded from outside the unpacked archive" if report and not inside else f"exit {code}"
        raise BuildError(f"`speechct selftest` failed in the unpacked archive ({why}); "
                         f"see {work / 'selftest-engine.log'}:\n{out[-3000:]}")

    pngs = work / "selftest-png"
    shutil.rmtree(pngs, ignore_errors=True)
    code, out, elapsed = run_logged([*prefix, str(exe(folder, "speechct-app")), "--selftest", "--selftest-out", str(pngs)],
                                    env, work / "selftest-app.log", SELFTEST_TIMEOUT_S)
    result["app_selftest_s"] = round(elapsed, 1)
    passed = re.search(r"^PASS: selftest in ([\d.]+) s", out, re.MULTILINE)
    result["checks"]["app"] = code == 0 and passed is not None
    if not result["checks"]["app"]:
        raise BuildError(f"`speechct-app --selftest` failed in the unpacked archive (exit {code}); "
                         f"see {work / 'selftest-app.log'}:\n{out[-3000:]}")
    result["app_checks"] = [line for line in out.splitlines() if line.startswith(("ok ", "FAIL", "PASS"))]

    if report is not None and report["bundle"]["path"]:
        result["checks"]["backbone"] = backbone_matches_bundle(Path(report["bundle"]["path"]), home)
        if not result["checks"]["backbone"]:
            raise BuildError("the Whisper encoder the bundle converted differs from the one the model bundle "
                             "was trained with (speech.backbone_sha256)")
    return result


def backbone_matches_bundle(bundle_dir: Path, home: Path) -> bool:
    """The encoder converted during the selftest (under the clean HOME's cache) has the sha256 that the
    model bundle's manifest names; the engine only warns on a mismatch, the build fails on one."""
    want = json.loads((bundle_dir / "bundle.json").read_text())["speech"]["backbone_sha256"]
    metas = list(home.rglob("backbones/whisper/*/meta.json"))
    return bool(metas) and all(json.loads(m.read_text())["sha256"] == want for m in metas)


def measure_first_window(folder: Path, work: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="speechct-window-", dir=work))
    try:
        env = netguard.clean_env(tmp / "home", offscreen=False)
        runs = {}
        for label in ("first_run", "second_run"):
            runs[label] = first_window.time_to_window([str(folder / "speechct-app")], env, timeout_s=STUDY_TIMEOUT_S)
        return runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None) -> int:
    args = parse_args(argv)
    dist, work = args.dist.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"variant": args.variant, "version": project_version(), "steps_s": {}}
    folder = dist / APP_NAME
    started = time.perf_counter()
    try:
        report["torch"] = check_torch_variant(args.variant)
        if not args.skip_build:
            t = time.perf_counter()
            run_pyinstaller(args.variant, dist, work)
            report["steps_s"]["pyinstaller"] = round(time.perf_counter() - t, 1)
        if not (folder / "speechct-app").is_file():
            raise BuildError(f"{folder / 'speechct-app'} does not exist (build first)")
        t = time.perf_counter()
        add_linux_extras(folder)
        report["files"] = write_manifest(folder)
        report["steps_s"]["manifest"] = round(time.perf_counter() - t, 1)
        report["bundle_bytes"] = folder_bytes(folder)
        report["largest"] = dict(largest_parts(folder))
        if not args.skip_build:
            # PyInstaller's work files (~190 MB) only speed up an unchanged rebuild; the disk is worth more
            shutil.rmtree(work / "pyinstaller", ignore_errors=True)
        if args.no_archive:
            print(f"bundle {folder}: {mib(report['bundle_bytes'])} (no archive, no selftest)")
            return 0
        archive = dist / archive_name(report["version"], args.variant)
        # gzip keeps ~38 % of the folder (556 of 1,465 MiB); ask for half
        check_free_space(dist, report["bundle_bytes"] // 2, "the archive")
        t = time.perf_counter()
        make_archive(folder, archive, f"{APP_NAME}-{report['version']}")
        report["steps_s"]["archive"] = round(time.perf_counter() - t, 1)
        report["archive"] = str(archive)
        report["archive_bytes"] = archive.stat().st_size
        if not args.no_selftest:
            t = time.perf_counter()
            report["selftest"] = selftest_archive(archive, folder, work)
            report["steps_s"]["selftest"] = round(time.perf_counter() - t, 1)
        if args.first_window:
            if first_window.available():
                report["first_window"] = measure_first_window(folder, work)
            else:
                report["first_window"] = "skipped: Xvfb or xwininfo missing"
    except BuildError as exc:
        report["error"] = str(exc)
        (work / "package-report.json").write_text(json.dumps(report, indent=1))
        print(f"package: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    report["total_s"] = round(time.perf_counter() - started, 1)
    (work / "package-report.json").write_text(json.dumps(report, indent=1))
    print_summary(report, folder)
    return 0


def print_summary(report: dict, folder: Path) -> None:
    print(f"bundle   {folder}: {mib(report['bundle_bytes'])} in {report['files']} files; largest: "
          + ", ".join(f"{k} {mib(v)}" for k, v in list(report["largest"].items())[:5]))
    if "archive" in report:
        print(f"archive  {report['archive']}: {mib(report['archive_bytes'])}")
    st = report.get("selftest")
    if st:
        print(f"selftest unpacked archive, clean env, network cut ({st['network']}): manifest ok, "
              f"speechct selftest {st['engine_selftest_s']} s, speechct-app --selftest {st['app_selftest_s']} s")
    fw = report.get("first_window")
    if isinstance(fw, dict):
        def shown(v):
            study = f"{v['study_s']} s" if v["study_s"] is not None else f"not within {STUDY_TIMEOUT_S} s"
            return f"main window {v['window_s']} s, sample study shown {study}"

        print("window   " + "; ".join(f"{k.replace('_', ' ')}: {shown(v)}" for k, v in fw.items()))
    elif fw:
        print(f"window   {fw}")
    steps = ", ".join(f"{k} {v} s" for k, v in report["steps_s"].items())
    print(f"package: OK in {report['total_s']} s ({steps})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
