"""The Orthanc fixture itself: own ports, own folder, DICOMweb and DIMSE up, stopped after."""

from __future__ import annotations

import socket

from .orthanc import start_orthanc


def test_orthanc_starts_on_free_ports_and_stops(orthanc_factory, tmp_path):
    server = orthanc_factory()
    assert server.http_port not in (8042,) and server.dicom_port not in (4242,)
    assert server.rest("GET", "/system").json()["DicomAet"] == "ORTHANC"
    assert server.rest("GET", "/plugins").json() and "dicom-web" in server.rest("GET", "/plugins").json()
    assert server.rest("GET", "/dicom-web/studies").status_code in (200, 204)
    # a second one beside it, with its own ports
    other = start_orthanc(tmp_path / "o2")
    try:
        assert {other.http_port, other.dicom_port}.isdisjoint({server.http_port, server.dicom_port})
    finally:
        other.stop()
    assert other.process.returncode is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", other.http_port)) != 0  # its port is closed again
