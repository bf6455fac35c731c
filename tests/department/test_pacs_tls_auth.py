"""DICOMweb over TLS with a private CA (Orthanc behind a TLS proxy, see :mod:`tests.department.tls_proxy`) and
bearer tokens: from the settings or the environment; a certificate that is not trusted is one clear line."""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import subprocess
import threading

import pytest

from engine.cli import main

from .orthanc import PASSWORD, USER
from .tls_proxy import TlsProxy


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _certificates(folder):
    """A private CA and a server certificate for 127.0.0.1 signed by it (openssl); returns (ca.pem, server.pem)."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=SpeechCT test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "san.ext")
    return folder / "ca.pem", folder / "server.crt", folder / "server.key"


@pytest.fixture
def tls_url(orthanc, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make test certificates")
    ca, cert, key = _certificates(tmp_path)
    proxy = TlsProxy(str(cert), str(key), orthanc.http_port)
    yield f"https://127.0.0.1:{proxy.port}/dicom-web", ca
    proxy.close()


def test_dicomweb_over_tls_with_a_private_ca(tls_url, tmp_path, capsys, monkeypatch):
    import certifi

    url, ca = tls_url
    # requests lets these override a session's CA: the server's ca_bundle must win over them
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    settings = tmp_path / "pacs.json"
    settings.write_text(json.dumps({"servers": {"tls": {"dicomweb": url, "username": USER,
                                                        "password": PASSWORD, "ca_bundle": str(ca)}}}))
    os.chmod(settings, 0o600)
    code, out, err = run(capsys, "pacs", "find", "--settings", settings, "--json")
    assert code == 0, err
    assert json.loads(out)["studies"] == []
    # without the CA: the system's CAs do not know it
    monkeypatch.setenv("SPEECHCT_PACS_USERNAME", USER)
    monkeypatch.setenv("SPEECHCT_PACS_PASSWORD", PASSWORD)
    code, _, err = run(capsys, "pacs", "find", "--url", url)
    assert code == 2 and err.count("\n") == 1
    assert "TLS failed (certificate not trusted)" in err and "ca_bundle" in err
    # the CA from the environment
    monkeypatch.setenv("SPEECHCT_PACS_CA_BUNDLE", str(ca))
    code, out, err = run(capsys, "pacs", "find", "--url", url, "--json")
    assert code == 0, err
    # plain HTTP to a TLS port
    code, _, err = run(capsys, "pacs", "find", "--url", url.replace("https://", "http://"), "--timeout", "5")
    assert code == 2 and err.count("\n") == 1 and "search (QIDO-RS)" in err


def test_bearer_token_is_sent_and_never_shown(tmp_path, capsys, monkeypatch, caplog):
    """The token goes in the Authorization header (seen by a small local HTTP server) and nowhere else."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Bearer tok-ABC":
                self.send_response(401)
                self.end_headers()
                return
            body = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    try:
        monkeypatch.setenv("SPEECHCT_PACS_TOKEN", "tok-ABC")
        with caplog.at_level(logging.DEBUG):  # dicomweb-client and urllib3 log requests at DEBUG
            code, out, err = run(capsys, "pacs", "find", "--url", url, "--json")
        assert code == 0, err
        assert seen == ["Bearer tok-ABC"] and "tok-ABC" not in out + err + caplog.text
        assert "GET" in caplog.text  # (the requests were logged, without the token)
        monkeypatch.setenv("SPEECHCT_PACS_TOKEN", "tok-WRONG")
        code, _, err = run(capsys, "pacs", "find", "--url", url)
        assert code == 2 and "refused our credentials (HTTP 401)" in err and "tok-WRONG" not in err
    finally:
        httpd.shutdown()


def test_dimse_over_tls(orthanc_factory, tmp_path, capsys, monkeypatch):
    """Orthanc's DICOM TLS: search and C-GET with the private CA; without it, or without TLS, one line."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make test certificates")
    from .studies import write_study

    ca, cert, key = _certificates(tmp_path)
    server = orthanc_factory(extra={"DicomTlsEnabled": True, "DicomTlsCertificate": str(cert),
                                    "DicomTlsPrivateKey": str(key), "DicomTlsTrustedCertificates": str(ca),
                                    "DicomTlsRemoteCertificateRequired": False})
    study = write_study(tmp_path / "s", 4)
    server.upload(study["files"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # (not used by DIMSE: it must not matter)
    code, _, err = run(capsys, "pacs", "find", "--aet", server.dimse_address, "--tls", "--timeout", "10")
    assert code == 2 and err.count("\n") == 1 and "TLS failed" in err and "ca_bundle" in err
    monkeypatch.setenv("SPEECHCT_PACS_CA_BUNDLE", str(ca))
    code, out, err = run(capsys, "pacs", "get", study["study_uid"], "--aet", server.dimse_address, "--tls", "--json",
                         "--cache", tmp_path / "c")
    assert code == 0, err
    assert json.loads(out)["fetched"] == len(study["files"])
    code, _, err = run(capsys, "pacs", "find", "--aet", server.dimse_address, "--timeout", "3")  # no --tls
    assert code == 2 and err.count("\n") == 1 and server.dimse_address in err, err
