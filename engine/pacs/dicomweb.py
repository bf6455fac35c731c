"""A PACS over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Authentication goes into the ``requests`` session (basic or bearer), TLS verification uses the
server's ``ca_bundle`` (else the system's CAs); none of it is ever put into a URL, a message or a
log line. Every transport failure becomes one :class:`PacsError` line naming the server's address.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import requests

from engine.pacs.errors import PacsError
from engine.pacs.query import SeriesMatch, StudyMatch, StudyQuery, as_int, as_text, modalities_of
from engine.pacs.settings import PacsServer

_STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances")


class _Session(requests.Session):
    """A requests session that

    - leaves ``*`` in query strings as it is (RFC 3986 allows it there): requests sends a QIDO
      wildcard as ``%2A``, which some servers (Orthanc's DICOMweb plugin 1.7) then match literally,
      so ``StudyDescription=*CHEST*`` would find nothing;
    - keeps the server's ``ca_bundle``: requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``
      from the environment override a session's ``verify``, which would drop the department's CA.
    """

    pinned_verify: str | bool | None = None

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.pinned_verify is not None:
            settings["verify"] = self.pinned_verify
        return settings

    def prepare_request(self, request):
        prepared = super().prepare_request(request)
        base, sep, query = (prepared.url or "").partition("?")
        if sep:
            prepared.url = base + sep + query.replace("%2A", "*").replace("%2a", "*")
        return prepared


def _dataset(item: dict):
    from pydicom import Dataset

    try:
        return Dataset.from_json(item)
    except Exception as exc:  # a malformed QIDO answer
        raise PacsError(f"unreadable DICOM JSON in the answer ({exc.__class__.__name__})") from exc


class DicomWebPacs:
    """See the module docstring. ``server.kind`` must be ``"dicomweb"``."""

    def __init__(self, server: PacsServer):
        from dicomweb_client import DICOMwebClient

        self.server = server
        session = _Session()
        if server.auth == "basic":
            session.auth = (server.username or "", server.password or "")
        elif server.auth == "bearer":
            session.headers["Authorization"] = f"Bearer {server.token}"
        session.verify = server.ca_bundle if (server.verify and server.ca_bundle) else server.verify
        if server.ca_bundle or not server.verify:
            session.pinned_verify = session.verify
        if server.client_cert:
            session.cert = (server.client_cert, server.client_key) if server.client_key else server.client_cert
        self.client = DICOMwebClient(server.url, session=session, timeout=server.timeout)
        # its default retries every failure (a refused connection too) 5 times with exponential waits (30 s):
        # a PACS that is down is said at once; a retry is the user's (and resumes, engine.pacs.retrieve)
        self.client.set_http_retry_params(retry=False)

    # --- error translation -----------------------------------------------------------------------
    def _call(self, what: str, func: Callable, *args, **kw):
        s = self.server
        try:
            return func(*args, **kw)
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"{what}: TLS failed ({_ssl_reason(exc)}); for a private CA set 'ca_bundle' in the "
                            "PACS settings or SPEECHCT_PACS_CA_BUNDLE", s.address) from None
        except requests.exceptions.ConnectTimeout:
            raise PacsError(f"{what}: no connection within {s.timeout:g} s (is the PACS up?)", s.address) from None
        except requests.exceptions.ReadTimeout:
            raise PacsError(f"{what}: timed out (no answer within {s.timeout:g} s)", s.address) from None
        except requests.exceptions.ConnectionError as exc:
            raise PacsError(f"{what}: cannot connect ({_conn_reason(exc)}): is the PACS up and the URL right?",
                            s.address) from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code in (401, 403):
                raise PacsError(f"{what}: the PACS refused our credentials (HTTP {code}); check the PACS settings "
                                "file or SPEECHCT_PACS_USERNAME / _PASSWORD / _TOKEN", s.address) from None
            if code == 404:
                raise PacsError(f"{what}: not found on the PACS (HTTP 404)", s.address) from None
            raise PacsError(f"{what}: the PACS answered HTTP {code}", s.address) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{what}: {exc.__class__.__name__}", s.address) from None

    # --- search ----------------------------------------------------------------------------------
    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        filters = {}
        if query.date:
            filters["StudyDate"] = query.date
        if query.modality:
            filters["ModalitiesInStudy"] = query.modality
        if query.description_pattern():
            filters["StudyDescription"] = query.description_pattern()
        if query.patient_id:
            filters["PatientID"] = query.patient_id
        if query.study_uid:
            filters["StudyInstanceUID"] = query.study_uid
        items = self._call("search (QIDO-RS)", self.client.search_for_studies, fields=list(_STUDY_FIELDS),
                           search_filters=filters, limit=query.limit) or []
        out = []
        for item in items:
            ds = _dataset(item)
            out.append(StudyMatch(str(ds.get("StudyInstanceUID", "")), as_text(ds.get("StudyDate")),
                                  as_text(ds.get("StudyDescription")), modalities_of(ds.get("ModalitiesInStudy")),
                                  as_int(ds.get("NumberOfStudyRelatedSeries")),
                                  as_int(ds.get("NumberOfStudyRelatedInstances"))))
        return out

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        items = self._call("series search (QIDO-RS)", self.client.search_for_series, study_uid,
                           fields=list(_SERIES_FIELDS)) or []
        out = []
        for item in items:
            ds = _dataset(item)
            out.append(SeriesMatch(str(ds.get("SeriesInstanceUID", "")), as_text(ds.get("Modality")),
                                   as_text(ds.get("SeriesDescription")), as_int(ds.get("SeriesNumber")),
                                   as_int(ds.get("NumberOfSeriesRelatedInstances"))))
        return out

    def find_instances(self, study_uid: str, series_uid: str) -> set[str]:
        items = self._call("instance search (QIDO-RS)", self.client.search_for_instances, study_uid, series_uid,
                           fields=["SOPInstanceUID"], get_remaining=True) or []
        return {str(_dataset(i).get("SOPInstanceUID", "")) for i in items} - {""}

    # --- retrieve / store ------------------------------------------------------------------------
    def retrieve(self, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None,
                 sink: Callable[[object], object], cancel: threading.Event | None = None) -> None:
        """WADO-RS: the whole series (streamed), or only ``sop_uids`` one by one (a resumed retrieval)."""
        def run():
            if sop_uids is None:
                stream = self.client.iter_series(study_uid, series_uid)
            else:
                stream = (self.client.retrieve_instance(study_uid, series_uid, uid) for uid in sorted(sop_uids))
            for ds in stream:
                if cancel is not None and cancel.is_set():
                    raise PacsError("retrieval cancelled; run it again to resume", self.server.address)
                sink(ds)

        self._call("retrieve (WADO-RS)", run)

    def store(self, datasets) -> None:
        """STOW-RS; a failure the server reports for an instance is an error."""
        response = self._call("store (STOW-RS)", self.client.store_instances, list(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise PacsError(f"store (STOW-RS): the PACS rejected {len(failed)} instance(s) (failure reason "
                            f"{reason})", self.server.address)

    def close(self) -> None:
        self.client._session.close() if hasattr(self.client, "_session") else None


def _ssl_reason(exc) -> str:
    text = str(exc)
    for key in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER", "hostname"):
        if key in text:
            return {"CERTIFICATE_VERIFY_FAILED": "certificate not trusted",
                    "certificate verify failed": "certificate not trusted",
                    "WRONG_VERSION_NUMBER": "the server does not speak TLS on this port",
                    "hostname": "certificate does not match the host name"}[key]
    return "handshake failed"


def _conn_reason(exc) -> str:
    text = str(exc)
    for key, says in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                      ("No route to host", "no route to host"), ("Connection reset", "connection reset"),
                      ("RemoteDisconnected", "the server closed the connection"),
                      ("Connection aborted", "connection aborted")):
        if key in text:
            return says
    return "connection failed"
