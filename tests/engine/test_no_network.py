"""``speechct rank`` (CT + dictation) uses no network: run it in a fresh process whose socket module
refuses every connection, send, name lookup and non-loopback bind, with every attempt logged to a file,
and check that the command still succeeds and nothing was attempted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.offline import OFFLINE_ENV

from .tiny_bundle import tiny_bundle_path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "assets" / "samples"

# sitecustomize runs at interpreter start, before any project or library import.
SITECUSTOMIZE = '''
import os, socket

_LOG = os.environ["SPEECHCT_SOCKET_LOG"]


def _refuse(what):
    def refused(*args, **kwargs):
        with open(_LOG, "a") as fh:
            fh.write(f"{what} {args[1:3]!r}\\n")
        raise OSError(f"network blocked by the test: {what}")
    return refused


class _NoSocket(socket.socket):
    """Creating a socket is not network traffic (urllib3 probes IPv6 support at import by binding one to
    ::1): connecting, sending and name lookups are refused, binding only to loopback."""

    def bind(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family != getattr(socket, "AF_UNIX", None) and host not in ("::1", "127.0.0.1", "localhost"):
            _refuse("bind")(self, address)
        return super().bind(address)


_NoSocket.connect = _refuse("connect")
_NoSocket.connect_ex = _refuse("connect_ex")
_NoSocket.sendto = _refuse("sendto")
socket.socket = _NoSocket
socket.create_connection = _refuse("create_connection")
socket.getaddrinfo = _refuse("getaddrinfo")
'''


def test_rank_opens_no_socket(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "sockets.log"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}  # the engine must set them itself
    env.update({
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "SPEECHCT_SOCKET_LOG": str(log),
        "SPEECHCT_EMBEDDING_CACHE": str(tmp_path / "emb"),
    })
    # the blocker itself works: a plain connect attempt is refused and logged
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('example.org', 80))"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode != 0 and "network blocked" in probe.stderr and log.read_text()
    log.unlink()

    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "rank", "--ct", str(SAMPLES / "study-002" / "dicom"),
         "--audio", str(SAMPLES / "study-002" / "dictation.wav"), "--bundle", str(tiny_bundle_path()),
         "--json", "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["findings"]) == 18 and result["dictation"] is not None
    assert not log.exists(), f"sockets were attempted: {log.read_text()}"
