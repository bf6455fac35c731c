"""PACS settings: servers, credentials from the file or the environment, never from the command line or in messages."""

from __future__ import annotations

import json
import logging
import os

import pytest

from engine.cli import main
from engine.errors import SpeechCTWarning
from engine.pacs.errors import PacsError
from engine.pacs.retrieve import parse_pacs_uri
from engine.pacs.settings import cache_settings, parse_aet_address, resolve_server


def _settings(tmp_path, data: dict, mode: int = 0o600):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps(data))
    os.chmod(path, mode)
    return path


def test_servers_and_credentials_from_the_file(tmp_path):
    path = _settings(tmp_path, {"default": "web", "servers": {
        "web": {"dicomweb": "https://pacs.example.org/dicom-web/", "username": "reader", "password": "pw-1",
                "ca_bundle": "/etc/ca.pem", "timeout": 5},
        "dimse": {"dimse": "PACS@10.0.0.5:104", "calling_aet": "READER1", "retrieve": "move", "move_port": 11113},
        "token": {"dicomweb": "https://other/dicom-web", "token": "tok-123"}}})
    web = resolve_server(settings=path)
    assert (web.kind, web.url, web.auth, web.username, web.password, web.ca_bundle, web.timeout) == (
        "dicomweb", "https://pacs.example.org/dicom-web", "basic", "reader", "pw-1", "/etc/ca.pem", 5.0)
    assert "pw-1" not in repr(web) and "pw-1" not in str(web)
    dimse = resolve_server("dimse", settings=path)
    assert (dimse.aet, dimse.host, dimse.port, dimse.calling_aet, dimse.retrieve, dimse.move_port) == (
        "PACS", "10.0.0.5", 104, "READER1", "move", 11113)
    assert str(dimse) == "dimse (PACS@10.0.0.5:104)"
    bearer = resolve_server("token", settings=path)
    assert bearer.auth == "bearer" and bearer.token == "tok-123" and "tok-123" not in repr(bearer)
    # an address given directly borrows the secrets of the settings' server with that address
    same = resolve_server(url="https://pacs.example.org/dicom-web", settings=path)
    assert same.password == "pw-1" and same.name == "web"


def test_credentials_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCT_PACS_USERNAME", "env-user")
    monkeypatch.setenv("SPEECHCT_PACS_PASSWORD", "env-pw")
    s = resolve_server(url="http://127.0.0.1:8042/dicom-web")
    assert (s.auth, s.username, s.password) == ("basic", "env-user", "env-pw")
    monkeypatch.delenv("SPEECHCT_PACS_USERNAME")
    monkeypatch.delenv("SPEECHCT_PACS_PASSWORD")
    monkeypatch.setenv("SPEECHCT_PACS_TOKEN", "env-token")
    s = resolve_server(url="http://127.0.0.1:8042/dicom-web")
    assert (s.auth, s.token) == ("bearer", "env-token")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "http://user:secret@pacs/dicom-web"}, "credentials do not go in the URL"),
    ({"url": "ftp://pacs/x"}, "starts with http"),
    ({"aet": "nohost"}, "expected AET@HOST:PORT"),
    ({"aet": "A_TITLE_LONGER_THAN_16@h:104"}, "1-16 printable"),
    ({"aet": "PACS@h:70000"}, "out of range"),
    ({}, "no PACS given"),
    ({"url": "http://a/x", "aet": "P@h:1"}, "not both"),
])
def test_bad_addresses_are_one_line(kwargs, message):
    with pytest.raises(PacsError, match=message) as info:
        resolve_server(**kwargs)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("servers", "message"), [
    ({"a": {"dicomweb": "http://x/dw", "auth": "basic", "username": "u"}}, "needs a username and a password"),
    ({"a": {"dicomweb": "http://x/dw", "auth": "bearer"}}, "needs a token"),
    ({"a": {"dicomweb": "http://x/dw", "dimse": "P@h:1"}}, "exactly one of"),
    ({"a": {"dicomweb": "http://x/dw", "pasword": "typo"}}, "unknown key"),
    ({"a": {"dimse": "P@h:1", "retrieve": "move"}}, "needs move_port"),
    ({"a": {"dicomweb": "http://x/dw", "timeout": -1}}, "timeout must be > 0"),
    ({"a": {"dimse": "P@h:1", "retrieve": "move", "move_port": 5, "tls": True}}, "listens without TLS"),
])
def test_bad_settings_are_one_line(tmp_path, servers, message):
    with pytest.raises(PacsError, match=message):
        resolve_server("a", settings=_settings(tmp_path, {"servers": servers}))


def test_unreadable_settings_and_unknown_server(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PacsError, match="not valid JSON"):
        resolve_server(settings=bad)
    path = _settings(tmp_path, {"servers": {"a": {"dicomweb": "http://x/dw"}, "b": {"dicomweb": "http://y/dw"}}})
    with pytest.raises(PacsError, match="no 'default'"):
        resolve_server(settings=path)
    with pytest.raises(PacsError, match="no server named 'c'"):
        resolve_server("c", settings=path)


def test_a_readable_secret_file_is_warned_about(tmp_path):
    path = _settings(tmp_path, {"servers": {"a": {"dicomweb": "http://x/dw", "username": "u", "password": "p"}}},
                     mode=0o644)
    with pytest.warns(SpeechCTWarning, match="chmod 600"):
        resolve_server(settings=path)


def test_cache_settings(tmp_path, monkeypatch):
    path = _settings(tmp_path, {"servers": {}, "cache": {"folder": str(tmp_path / "c"), "max_gb": 2}})
    monkeypatch.delenv("SPEECHCT_PACS_CACHE")
    cs = cache_settings(path)
    assert cs.folder == tmp_path / "c" and cs.max_bytes == 2_000_000_000
    monkeypatch.setenv("SPEECHCT_PACS_CACHE_GB", "0.5")
    assert cache_settings(path).max_bytes == 500_000_000
    monkeypatch.setenv("SPEECHCT_PACS_CACHE_GB", "lots")
    with pytest.raises(PacsError, match="number of GB"):
        cache_settings(path)


def test_pacs_uris():
    assert parse_pacs_uri("pacs://main/1.2.3") == ("main", "1.2.3", None)
    assert parse_pacs_uri("pacs://main/1.2.3/4.5.6") == ("main", "1.2.3", "4.5.6")
    for bad, message in (("pacs://main/../etc", "not a DICOM"), ("pacs://u:p@main/1.2", "credentials"),
                         ("pacs:///1.2.3", "expected pacs://"), ("pacs://main/1.2/3.4/5.6", "expected pacs://")):
        with pytest.raises(PacsError, match=message):
            parse_pacs_uri(bad)
    assert parse_aet_address("ORTHANC@[::1]:4242") == ("ORTHANC", "::1", 4242)


def test_cli_never_prints_a_secret(tmp_path, capsys, caplog):
    """A refused connection with credentials configured: one line, the address, no secret (also not in logs)."""
    path = _settings(tmp_path, {"servers": {"a": {"dicomweb": "http://127.0.0.1:9/dicom-web", "username": "u",
                                                  "password": "hunter2-secret"}}})
    with caplog.at_level(logging.DEBUG):
        code = main(["pacs", "find", "--settings", str(path), "--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "127.0.0.1:9" in err and "connection refused" in err
    assert "hunter2" not in out + err + caplog.text
    code = main(["pacs", "find", "--url", "http://u:hunter2-secret@127.0.0.1:9/dicom-web"])
    out, err = capsys.readouterr()
    assert code == 2 and "credentials do not go in the URL" in err and "hunter2" not in err
