"""Fixtures for the department tests: a real Orthanc per test (see :mod:`tests.department.orthanc`) and
a real PostgreSQL + pgvector for the shared library (:mod:`tests.postgres_server`).

Without Orthanc the tests that need it are skipped, except under ``CI=true`` where a missing
server fails the run (CI installs it through scripts/system-deps.sh).
"""

from __future__ import annotations

import os

import pytest

from tests.postgres_server import pg_url, postgres  # noqa: F401 - fixtures (the shared library)

from . import orthanc as orthanc_mod


def _need_orthanc() -> None:
    why = orthanc_mod.missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no Orthanc: {why}")
        pytest.skip(why)


@pytest.fixture
def orthanc_factory(tmp_path_factory):
    """``start(auth=True, extra=None)`` starts one more Orthanc; all are stopped after the test."""
    _need_orthanc()
    started = []

    def start(**kw) -> orthanc_mod.OrthancServer:
        server = orthanc_mod.start_orthanc(tmp_path_factory.mktemp("orthanc"), **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def orthanc(orthanc_factory) -> orthanc_mod.OrthancServer:
    return orthanc_factory()


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """No test reads the user's PACS settings, cache or credentials."""
    for name in list(os.environ):
        if name.startswith("SPEECHCT_PACS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPEECHCT_PACS_CONFIG", str(tmp_path / "no-pacs-settings.json"))
    monkeypatch.setenv("SPEECHCT_PACS_CACHE", str(tmp_path / "pacs-cache"))
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))


def write_pacs_settings(path, server: orthanc_mod.OrthancServer, **extra_servers) -> str:
    """A PACS settings file naming ``server`` as "web" (DICOMweb, basic auth) and "dimse" (C-GET); mode 600."""
    import json

    user, password = server.auth or (None, None)
    servers = {"web": {"dicomweb": server.dicomweb_url, "username": user, "password": password, "timeout": 20},
               "dimse": {"dimse": server.dimse_address, "calling_aet": "SPEECHCT", "timeout": 20},
               **extra_servers}
    if server.auth is None:
        servers["web"] = {"dicomweb": server.dicomweb_url, "timeout": 20}
    path.write_text(json.dumps({"default": "web", "servers": servers}))
    os.chmod(path, 0o600)
    return str(path)
