"""The installer carries what the department's libraries need: none of them imports a package the bundle
excludes, and the distribution metadata and data files they read at run time are collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import bundle_contents  # noqa: E402

LIBRARIES = ("highdicom", "highdicom.sr", "dicomweb_client", "pynetdicom", "requests", "certifi",
             "psycopg", "psycopg_binary._psycopg", "pgvector.psycopg")


def test_department_libraries_import_without_the_excluded_packages():
    """Each library is imported in a fresh interpreter where every excluded package is missing, as in the bundle."""
    excluded = sorted({name.split(".")[0] for name in bundle_contents.EXCLUDES} - {"tests", "train", "bench", "scripts"})
    code = textwrap.dedent(f"""
        import importlib, sys
        EXCLUDED = set({excluded!r})
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in EXCLUDED:
                    raise ModuleNotFoundError(f"excluded from the bundle: {{name}}")
        sys.meta_path.insert(0, Missing())
        for name in {LIBRARIES!r}:
            importlib.import_module(name)
        import engine.report_sr, engine.pacs.dicomweb, engine.pacs.dimse, engine.pacs.workstation
        import engine.library.pg_store, psycopg
        assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__  # the wheel's libpq, as the bundle carries it
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_metadata_and_data_files_are_collected():
    import highdicom

    assert {"pynetdicom", "dicomweb-client", "highdicom"} <= set(bundle_contents.METADATA)
    assert "highdicom" in bundle_contents.COLLECT_DATA
    data = [p for p in Path(highdicom.__file__).parent.rglob("*") if p.suffix in (".json", ".icc")]
    assert data  # what collect_data_files("highdicom") picks up: the standard's tables, ICC profiles
    spec = (ROOT / "packaging" / "speechct.spec").read_text()
    assert "bc.COLLECT_DATA" in spec and "collect_data_files(package)" in spec


def test_the_postgresql_client_is_carried_with_its_compiled_libpq():
    """psycopg reaches its compiled core by name, and that core imports psycopg's modules from C: the
    spec names them (hidden imports, every psycopg submodule); the test server stays out."""
    import importlib.util

    from PyInstaller.utils.hooks import collect_submodules

    assert {"psycopg_binary", "psycopg_binary.pq", "psycopg_binary._psycopg", "pgvector.psycopg"} <= set(
        bundle_contents.HIDDEN_IMPORTS)
    assert "psycopg" in bundle_contents.COLLECT_SUBMODULES and "pgserver" in bundle_contents.EXCLUDES
    import psycopg  # noqa: F401  (psycopg_binary refuses to be imported first)

    missing = [name for name in bundle_contents.HIDDEN_IMPORTS if importlib.util.find_spec(name) is None]
    assert not missing, missing  # a misspelt hidden import is silently skipped by PyInstaller
    modules = collect_submodules("psycopg")
    assert {"psycopg.types.numeric", "psycopg.errors", "psycopg.adapt"} <= set(modules)
    spec = (ROOT / "packaging" / "speechct.spec").read_text()
    assert "bc.COLLECT_SUBMODULES" in spec and "bc.HIDDEN_IMPORTS" in spec
