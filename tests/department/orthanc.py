"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the department tests.

:func:`start_orthanc` runs ``Orthanc`` with a configuration of its own in a temporary folder, on
free loopback ports (HTTP + DICOM), with the DICOMweb plugin, HTTP basic auth, the DIMSE AE title
``ORTHANC`` (called AET checked) and C-FIND / C-GET / C-MOVE allowed for any calling AE; it polls
``/system`` until the server answers and :meth:`OrthancServer.stop` ends it. Never the Debian
service's own Orthanc on 8042/4242: the package's configuration is not read at all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"  # Debian puts it in sbin, off some users' PATH
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "speechct", "orthanc-test-password"


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            if (Path(folder) / name).exists():
                return Path(folder) / name
    return None


def missing() -> str | None:
    """Why no Orthanc can be started here, or None."""
    if not os.access(ORTHANC, os.X_OK):
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb; scripts/system-deps.sh)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    folder: Path
    http_port: int
    dicom_port: int
    process: subprocess.Popen
    aet: str = "ORTHANC"
    auth: tuple[str, str] | None = (USER, PASSWORD)
    log: Path = field(default=None)  # type: ignore[assignment]

    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse_address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def rest(self, method: str, path: str, **kw) -> requests.Response:
        r = requests.request(method, self.url + path, auth=self.auth, timeout=30, verify=False, **kw)
        r.raise_for_status()
        return r

    def upload(self, files) -> list[str]:  # (the fixture's own calls skip TLS verification: it is not under test)
        """Store DICOM files through the REST API; returns Orthanc's instance ids."""
        ids = []
        for f in files:
            ids.append(self.rest("POST", "/instances", data=Path(f).read_bytes()).json()["ID"])
        return ids

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        self.rest("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port,
                                                       "AllowGet": True, "AllowMove": True, "AllowStore": True,
                                                       "AllowFind": True, "AllowEcho": True})

    def sop_uids(self, study_uid: str | None = None) -> set[str]:
        """SOPInstanceUIDs stored (of one study, or all)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid} if study_uid else {},
                 "Expand": True}
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.rest("POST", "/tools/find", json=query).json()}

    def delete_instances(self, sop_uids) -> None:
        for uid in sop_uids:
            found = self.rest("POST", "/tools/lookup", data=uid).json()
            for hit in found:
                if hit["Type"] == "Instance":
                    self.rest("DELETE", hit["Path"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # its database is a temporary folder: no need to wait long
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(folder: Path, *, auth: bool = True, extra: dict | None = None, timeout: float = 60.0) -> OrthancServer:
    """Start an Orthanc in ``folder`` and wait until it answers (module doc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = {
        "Name": "speechct-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "Plugins": [str(dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1", "Ssl": False},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {},
        "DicomScpTimeout": 30,
        "StableAge": 1,
        "HttpThreadsCount": 4,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
        **(extra or {}),
    }
    conf = folder / "orthanc.json"
    conf.write_text(json.dumps(config, indent=1))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([ORTHANC, "--logdir=" + str(folder), str(conf)], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=folder, env={**os.environ, "LC_ALL": "C"})
    server = OrthancServer(folder, http_port, dicom_port, process, auth=(USER, PASSWORD) if auth else None, log=log,
                           tls=bool(config.get("SslEnabled")))
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(server.url + "/system", auth=server.auth, timeout=2, verify=False).status_code == 200:
                # the DICOM port too (Orthanc opens it after the HTTP server)
                with socket.create_connection(("127.0.0.1", dicom_port), timeout=2):
                    return server
        except (requests.RequestException, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
