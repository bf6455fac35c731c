"""One interface over DICOMweb and DIMSE; :func:`connect` picks the implementation by the server's kind.

Both implement::

    find_studies(StudyQuery) -> list[StudyMatch]
    find_series(study_uid) -> list[SeriesMatch]
    find_instances(study_uid, series_uid) -> set[SOPInstanceUID]
    retrieve(study_uid, series_uid, sop_uids | None, sink(dataset), cancel: threading.Event | None)
    store(datasets)
    close()
"""

from __future__ import annotations

import logging

from engine.pacs.settings import PacsServer

# pynetdicom logs errors (refused associations, timeouts) that we report as one line ourselves:
# without a handler of our own, Python's last-resort handler would print them to stderr too.
for _name in ("pynetdicom", "dicomweb_client"):
    logging.getLogger(_name).addHandler(logging.NullHandler())


def connect(server: PacsServer):
    if server.kind == "dicomweb":
        from engine.pacs.dicomweb import DicomWebPacs

        return DicomWebPacs(server)
    from engine.pacs.dimse import DimsePacs

    return DimsePacs(server)
