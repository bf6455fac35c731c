"""A PACS over DIMSE (pynetdicom): C-FIND search, C-GET retrieve (or C-MOVE to our own C-STORE
receiver), C-STORE send, Study Root information model.

C-GET is the default: the instances come back on our own association, so the PACS need not know
us. C-MOVE (``retrieve: "move"``) needs the PACS to know ``calling_aet`` at our host and
``move_port``; a C-STORE receiver listens there for the duration of the move only.

DICOM TLS (``tls: true`` in the settings, or ``--tls``) verifies the PACS's certificate with the
server's ``ca_bundle`` (else the system's CAs) and presents ``client_cert`` when given.

A PACS that is down, refuses the association (its reason is named), aborts it or does not answer
within ``timeout`` seconds is one :class:`PacsError` line naming ``AET@HOST:PORT``.
pynetdicom's own log goes nowhere unless ``speechct -v`` configures logging.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable

from engine.pacs.errors import PacsError
from engine.pacs.query import SeriesMatch, StudyMatch, StudyQuery, as_int, as_text, modalities_of
from engine.pacs.settings import PacsServer

#: Storage SOP classes accepted during a retrieval (CT only: what the reader reads).
CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
              "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
              "1.2.840.10008.5.1.4.1.1.2.2")  # Legacy Converted Enhanced CT Image Storage
#: Transfer syntaxes accepted for those: uncompressed, deflate, RLE, JPEG lossless, JPEG-LS, JPEG 2000
#: (pydicom decodes them with the pylibjpeg / pyjpegls plugins the engine installs).
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70",
                     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50")
_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
_GET = "1.2.840.10008.5.1.4.1.2.2.3"


class DimsePacs:
    """See the module docstring. ``server.kind`` must be ``"dimse"``."""

    def __init__(self, server: PacsServer):
        self.server = server

    # --- associations ----------------------------------------------------------------------------
    def _ae(self):
        from pynetdicom import AE

        t = self.server.timeout
        ae = AE(ae_title=self.server.calling_aet)
        ae.acse_timeout = t
        ae.dimse_timeout = t
        ae.network_timeout = t
        ae.connection_timeout = t
        return ae

    def _tls_context(self):
        import ssl

        s = self.server
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ca_bundle or None)
        if not s.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if s.client_cert:
            context.load_cert_chain(s.client_cert, s.client_key or None)
        return context

    def _reachable(self, what: str) -> None:
        """A plain TCP connect first (and the TLS handshake with ``tls``), so that 'down', 'too slow' and
        'certificate not trusted' are told apart from a refused association."""
        import ssl

        s = self.server
        try:
            with socket.create_connection((s.host, s.port), timeout=s.timeout) as sock:
                if s.tls:
                    with self._tls_context().wrap_socket(sock, server_hostname=s.host):
                        pass
        except ssl.SSLCertVerificationError as exc:
            raise PacsError(f"{what}: TLS failed ({exc.verify_message or 'certificate not trusted'}); for a private "
                            "CA set 'ca_bundle' in the PACS settings or SPEECHCT_PACS_CA_BUNDLE", s.address) from None
        except ssl.SSLError as exc:
            raise PacsError(f"{what}: TLS failed ({exc.reason or 'handshake failed'}; does the PACS speak DICOM TLS "
                            "on this port?)", s.address) from None
        except TimeoutError:
            raise PacsError(f"{what}: no connection within {s.timeout:g} s (is the PACS up?)", s.address) from None
        except ConnectionRefusedError:
            raise PacsError(f"{what}: cannot connect (connection refused): is the PACS up and the port right?",
                            s.address) from None
        except OSError as exc:
            raise PacsError(f"{what}: cannot connect ({exc.strerror or exc.__class__.__name__})", s.address) from None

    @contextlib.contextmanager
    def _association(self, what: str, ae, ext_neg=None, handlers=None):
        s = self.server
        self._reachable(what)
        start = time.monotonic()
        from pynetdicom import evt
        from pynetdicom.pdu import A_ASSOCIATE_RJ

        rejections: list = []  # the A-ASSOCIATE-RJ as received: when the peer closes the connection right
        # after it, pynetdicom may process the closing first and report an abort instead of the rejection

        def on_pdu(event):
            if isinstance(event.pdu, A_ASSOCIATE_RJ):
                rejections.append(event.pdu)

        tls_args = (self._tls_context(), s.host) if s.tls else None
        assoc = ae.associate(s.host, s.port, ae_title=s.aet, ext_neg=ext_neg, tls_args=tls_args,
                             evt_handlers=[*(handlers or []), (evt.EVT_PDU_RECV, on_pdu)])
        if not assoc.is_established:
            if assoc.is_rejected or rejections:
                reason = (getattr(getattr(assoc.acceptor, "primitive", None), "reason_str", None) if assoc.is_rejected
                          else rejections[0].reason_str) or "no reason given"
                raise PacsError(f"{what}: the PACS refused the association ({reason}; we call it {s.aet!r} "
                                f"as {s.calling_aet!r})", s.address)
            if time.monotonic() - start >= s.timeout * 0.9:
                raise PacsError(f"{what}: timed out (no association answer within {s.timeout:g} s)", s.address)
            hint = "" if s.tls else ", or does this port want DICOM TLS (--tls)"
            raise PacsError(f"{what}: the PACS aborted the association (no accepted service for "
                            f"{s.calling_aet!r}{hint}?)", s.address)
        self._last_answer = time.monotonic()
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _check_status(self, what: str, status, assoc) -> int:
        s = self.server
        if status is None or "Status" not in status:
            if time.monotonic() - self._last_answer >= s.timeout * 0.9:
                raise PacsError(f"{what}: timed out (no answer within {s.timeout:g} s)", s.address)
            raise PacsError(f"{what}: the PACS ended the association without an answer (does it allow this "
                            f"for our AE title {s.calling_aet!r}?)", s.address)
        self._last_answer = time.monotonic()
        return int(status.Status)

    # --- search ----------------------------------------------------------------------------------
    def _find(self, what: str, identifier) -> list:
        ae = self._ae()
        ae.add_requested_context(_FIND)
        out = []
        with self._association(what, ae) as assoc:
            for status, ds in assoc.send_c_find(identifier, _FIND):
                code = self._check_status(what, status, assoc)
                if code in (0xFF00, 0xFF01) and ds is not None:
                    out.append(ds)
                elif code != 0x0000:
                    raise PacsError(f"{what}: the PACS answered status 0x{code:04X}", self.server.address)
        return out

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        from pydicom import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = query.study_uid or ""
        q.StudyDate = query.date or ""
        q.StudyDescription = query.description_pattern() or ""
        q.ModalitiesInStudy = query.modality or ""
        q.PatientID = query.patient_id or ""
        q.NumberOfStudyRelatedSeries = None
        q.NumberOfStudyRelatedInstances = None
        found = self._find("search (C-FIND)", q)
        out = [StudyMatch(str(ds.get("StudyInstanceUID", "")), as_text(ds.get("StudyDate")),
                          as_text(ds.get("StudyDescription")), modalities_of(ds.get("ModalitiesInStudy")),
                          as_int(ds.get("NumberOfStudyRelatedSeries")), as_int(ds.get("NumberOfStudyRelatedInstances")))
               for ds in found]
        return out[: query.limit] if query.limit else out

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        from pydicom import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.Modality = ""
        q.SeriesDescription = ""
        q.SeriesNumber = None
        q.NumberOfSeriesRelatedInstances = None
        return [SeriesMatch(str(ds.get("SeriesInstanceUID", "")), as_text(ds.get("Modality")),
                            as_text(ds.get("SeriesDescription")), as_int(ds.get("SeriesNumber")),
                            as_int(ds.get("NumberOfSeriesRelatedInstances")))
                for ds in self._find("series search (C-FIND)", q)]

    def find_instances(self, study_uid: str, series_uid: str) -> set[str]:
        from pydicom import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = ""
        return {str(ds.get("SOPInstanceUID", "")) for ds in self._find("instance search (C-FIND)", q)} - {""}

    # --- retrieve --------------------------------------------------------------------------------
    def _retrieve_identifier(self, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None):
        from pydicom import Dataset

        q = Dataset()
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        if sop_uids is None:
            q.QueryRetrieveLevel = "SERIES"
        else:
            q.QueryRetrieveLevel = "IMAGE"
            q.SOPInstanceUID = sorted(sop_uids)
        return q

    def retrieve(self, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None,
                 sink: Callable[[object], object], cancel: threading.Event | None = None) -> None:
        """C-GET (or C-MOVE) of the series, or of ``sop_uids`` only (a resumed retrieval)."""
        if self.server.retrieve == "move":
            return self._retrieve_move(study_uid, series_uid, sop_uids, sink, cancel)
        return self._retrieve_get(study_uid, series_uid, sop_uids, sink, cancel)

    def _store_handler(self, sink, cancel, errors: list):
        def on_store(event):
            if cancel is not None and cancel.is_set():
                return 0xA700  # refused: out of resources (we stop)
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
                sink(ds)
            except Exception as exc:  # noqa: BLE001 - reported after the retrieval, one line
                errors.append(exc)
                return 0xA700
            return 0x0000
        return on_store

    def _run_retrieve(self, what: str, responses, assoc, cancel, errors) -> None:
        s = self.server
        for status, _ in responses:
            code = self._check_status(what, status, assoc)
            if cancel is not None and cancel.is_set():
                assoc.abort()
                raise PacsError("retrieval cancelled; run it again to resume", s.address)
            if code in (0xFF00,):
                continue
            if code in (0x0000, 0xB000):
                break  # warnings (some sub-operations failed) show up as missing instances
            if errors:
                raise errors[0] if isinstance(errors[0], PacsError) else PacsError(
                    f"{what}: writing a received instance failed ({errors[0]})", s.address)
            if code == 0xA701 or code == 0xA702:
                raise PacsError(f"{what}: the PACS ran out of resources (status 0x{code:04X})", s.address)
            if code == 0xA801:
                raise PacsError(f"{what}: the PACS does not know the move destination {s.calling_aet!r} "
                                "(add it there with our host and move_port)", s.address)
            raise PacsError(f"{what}: the PACS answered status 0x{code:04X}", s.address)
        if errors:
            raise errors[0] if isinstance(errors[0], PacsError) else PacsError(
                f"{what}: writing a received instance failed ({errors[0]})", s.address)

    def _retrieve_get(self, study_uid, series_uid, sop_uids, sink, cancel) -> None:
        from pynetdicom import build_role, evt

        what = "retrieve (C-GET)"
        ae = self._ae()
        ae.add_requested_context(_GET)
        roles = []
        for uid in CT_STORAGE:
            ae.add_requested_context(uid, list(TRANSFER_SYNTAXES))
            roles.append(build_role(uid, scp_role=True))
        errors: list = []
        handlers = [(evt.EVT_C_STORE, self._store_handler(sink, cancel, errors))]
        with self._association(what, ae, ext_neg=roles, handlers=handlers) as assoc:
            identifier = self._retrieve_identifier(study_uid, series_uid, sop_uids)
            self._run_retrieve(what, assoc.send_c_get(identifier, _GET), assoc, cancel, errors)

    def _retrieve_move(self, study_uid, series_uid, sop_uids, sink, cancel) -> None:
        from pynetdicom import evt

        s = self.server
        what = "retrieve (C-MOVE)"
        receiver = self._ae()
        for uid in CT_STORAGE:
            receiver.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        errors: list = []
        lock = threading.Lock()

        def locked_sink(ds):
            with lock:
                return sink(ds)

        try:
            server = receiver.start_server(("", int(s.move_port)), block=False, ae_title=s.calling_aet,
                                           evt_handlers=[(evt.EVT_C_STORE,
                                                          self._store_handler(locked_sink, cancel, errors))])
        except OSError as exc:
            raise PacsError(f"{what}: our C-STORE receiver cannot listen on port {s.move_port} "
                            f"({exc.strerror or exc})", s.address) from None
        try:
            ae = self._ae()
            ae.add_requested_context(_MOVE)
            with self._association(what, ae) as assoc:
                identifier = self._retrieve_identifier(study_uid, series_uid, sop_uids)
                self._run_retrieve(what, assoc.send_c_move(identifier, s.calling_aet, _MOVE), assoc, cancel, errors)
        finally:
            server.shutdown()

    # --- store -----------------------------------------------------------------------------------
    def store(self, datasets) -> None:
        what = "store (C-STORE)"
        datasets = list(datasets)
        ae = self._ae()
        for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        with self._association(what, ae) as assoc:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = self._check_status(what, status, assoc)
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise PacsError(f"{what}: the PACS refused instance {ds.SOPInstanceUID} "
                                    f"(status 0x{code:04X})", self.server.address)

    def close(self) -> None:
        pass
