"""The ranked findings as a DICOM Structured Report (highdicom): what goes back to the PACS.

An SR "Imaging Measurement Report" (TID 1500, Comprehensive SR) with one measurement group
(TID 1501) of the source study:

- per finding, its probability (a measurement named ``Probability of <finding>``, UCUM "no units",
  each carrying the algorithm identification (TID 4019) with the bundle's threshold and validation
  AUROC as parameters), and for the findings the image model is reliable on (validation AUROC at or
  above the bar, the ones ``speechct rank`` checks against a dictation) a qualitative evaluation
  Present/Absent (SNOMED CT) by the threshold; weak findings carry their probability only;
- with ``dictation=True`` and a dictation: a second group, the dictation check (per finding where
  dictation and image disagree: negated / omitted / unsupported);
- AI output, unverified: the observer is a device (SpeechCT and the bundle), VerificationFlag
  UNVERIFIED, CompletionFlag COMPLETE, SeriesDescription says so;
- the source series is referenced (Current Requested Procedure Evidence: every instance of it).

Findings are coded in a private scheme (``99SPEECHCT``: F01..F18 in CT-RATE's label order, P01..P18
for their probabilities, D1..D3 for the dictation check's kinds): a mapping to SNOMED CT is not made
up here. Patient and study identifiers come from the source series' headers, read in memory for
this report only; SpeechCT never stores them (the library keeps none).
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

from engine.errors import StudyError

SCHEME = "99SPEECHCT"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "SpeechCT AI findings (unverified)"
MANUFACTURER = "SpeechCT"
#: LOINC "CT Chest"
PROCEDURE = ("24627-2", "LN", "CT Chest")
DISCREPANCY_CODES = {"negated": "D1", "omitted": "D2", "unsupported": "D3"}


def finding_code(label: str, prefix: str = "F"):
    from pydicom.sr.coding import Code

    from engine.labels import LABELS

    i = LABELS.index(label) + 1
    meaning = label if prefix == "F" else f"Probability of {label}"
    return Code(f"{prefix}{i:02d}", SCHEME, meaning)


def source_headers(path: str | Path, series_uid: str | None) -> list:
    """Headers (no pixels) of every instance of ``series_uid`` under ``path``, in memory only."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from engine.io.dicom_scan import list_files

    headers = []
    for f in list_files(path):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError):
            continue
        if series_uid is None or str(ds.get("SeriesInstanceUID", "")) == series_uid:
            if "SOPInstanceUID" in ds and "StudyInstanceUID" in ds:
                headers.append(ds)
    if not headers:
        raise StudyError(f"no DICOM instance of series {series_uid} found for the SR's references", path)
    headers.sort(key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    return headers


def build_sr(result: dict, headers: list, *, dictation: bool = False, now: datetime.datetime | None = None):
    """The SR dataset for one ``speechct rank`` result (:meth:`engine.runtime.Analysis.to_json` shape)."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from engine.version import __version__

    bundle = result["bundle"]
    bundle_name = bundle.get("name") or "bundle"
    version = f"{__version__} {bundle_name} {bundle['hash'][:12]}"
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="SpeechCT", manufacturer_name=MANUFACTURER, model_name=bundle_name[:64]))
    context = ObservationContext(observer_device_context=device)
    unchecked = set(result.get("unchecked") or ())

    def algorithm(extra: list[str] | None = None) -> AlgorithmIdentification:
        return AlgorithmIdentification(name="SpeechCT", version=version[:64], parameters=extra or None)

    measurements, evaluations = [], []
    for f in result["findings"]:
        params = [f"threshold {f['threshold']:.3f}"]
        if f.get("auroc") is not None:
            params.append(f"validation AUROC {f['auroc']:.3f}")
        if f["label"] in unchecked:
            params.append("weak: not called present or absent")
        measurements.append(Measurement(name=finding_code(f["label"], "P"), value=round(float(f["probability"]), 6),
                                        unit=codes.UCUM.NoUnits, algorithm_id=algorithm(params)))
        if f["label"] not in unchecked:
            evaluations.append(QualitativeEvaluation(name=finding_code(f["label"]),
                                                     value=codes.SCT.Present if f["positive"] else codes.SCT.Absent))
    groups = [MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="SpeechCT findings"),
        algorithm_id=algorithm(), measurements=measurements, qualitative_evaluations=evaluations or None)]
    if dictation and result.get("discrepancies") is not None:
        checked = [QualitativeEvaluation(name=finding_code(d["label"]),
                                         value=Code(DISCREPANCY_CODES[d["kind"]], SCHEME,
                                                    f"dictation check: {d['kind']}"))
                   for d in result["discrepancies"]]
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="SpeechCT dictation check"),
            algorithm_id=algorithm(["dictation head"]), qualitative_evaluations=checked or None,
            measurements=None if checked else [Measurement(
                name=Code("D0", SCHEME, "Number of discrepancies"), value=0, unit=Code("{#}", "UCUM", "count"))]))
    report = MeasurementReport(observation_context=context, procedure_reported=Code(*PROCEDURE),
                               imaging_measurements=groups)
    now = now or datetime.datetime.now()
    with warnings.catch_warnings():
        # the source's PatientName is copied as it is (e.g. a single-component "ANONYMOUS"): not ours to judge
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = ComprehensiveSR(
            evidence=headers, content=report, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
            content_date=now.date(), content_time=now.time().replace(microsecond=0),
        )
    sr.ManufacturerModelName = bundle_name[:64]
    sr.SoftwareVersions = version[:64]
    return sr


def write_sr(sr, out: str | Path) -> Path:
    """Write atomically (a temporary name in the same folder, then a rename)."""
    out = Path(out)
    if out.is_dir():
        raise StudyError("is a folder; give a file name for the SR", out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot create the folder ({exc.strerror or exc})", out.parent) from None
    from engine.atomic import atomic_path

    try:
        with atomic_path(out) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise StudyError(f"cannot write the SR ({exc.strerror or exc})", out) from None
    return out


def sr_for_result(result: dict, *, dictation: bool = False):
    """:func:`build_sr` with the headers of the result's source series (a DICOM study only)."""
    study = result["study"]
    if study.get("format") not in ("dicom", "dicom-enhanced") or not study.get("path"):
        raise StudyError("an SR references the source DICOM series: this study is "
                         f"{study.get('format') or 'not DICOM'}", study.get("path") or result["inputs"]["ct"])
    return build_sr(result, source_headers(study["path"], study.get("series_uid")), dictation=dictation)


def send_result(result: dict, server_name: str | None, *, dictation: bool = False,
                settings: str | Path | None = None) -> str:
    """Build the SR of ``result`` (an :meth:`engine.runtime.Analysis.to_json`, a DICOM study's) and store it
    on the PACS settings' server ``server_name`` (None: the default) by STOW-RS or C-STORE, by its kind;
    returns the SR's SOPInstanceUID. ``dictation``: add the dictation check. Failures: one line
    (:class:`engine.pacs.errors.PacsError`, or StudyError for a study that is not DICOM)."""
    from engine.pacs.client import connect
    from engine.pacs.settings import resolve_server

    # a wrong server is said before the SR is built
    server = resolve_server(server_name or None, settings=Path(settings) if settings else None)
    result = {"inputs": {"ct": (result.get("study") or {}).get("path")}, **result}
    sr = sr_for_result(result, dictation=dictation)
    client = connect(server)
    try:
        client.store([sr])
    finally:
        client.close()
    return str(sr.SOPInstanceUID)
