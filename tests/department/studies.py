"""Synthetic studies for the department tests, written with the engine's own DICOM writer."""

from __future__ import annotations

from pathlib import Path

import pydicom

from engine.io import write_dicom_series
from tests.engine.library_fakes import make_volume

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "P-0042"
#: (z, y, x) at 2 x 1 x 1 mm: big enough for the tiny test bundle's 20 x 11.2 x 11.2 mm grid
SHAPE = (24, 24, 24)


def write_study(folder: Path, seed: int, *, modality: str = "CT", description: str = "chest",
                study_description: str = "CT CHEST", date: str = "20240301", n_series: int = 1,
                patient: tuple[str, str] = (PATIENT_NAME, PATIENT_ID), shape=SHAPE) -> dict:
    """One study (``n_series`` series of one modality) with identifiers; returns its UIDs and files."""
    files, series = [], []
    for k in range(n_series):
        paths = write_dicom_series(make_volume(seed * 10 + k, shape), folder / f"series{k + 1}", seed=seed,
                                   modality=modality, series_description=f"{description} {k + 1}",
                                   series_number=k + 1, study_date=date)
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.PatientName, ds.PatientID = patient
            ds.StudyDescription = study_description
            ds.AccessionNumber = f"ACC{seed:04d}"
            ds.save_as(p)
        files += paths
        series.append(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return {"study_uid": study_uid, "series": series, "files": files, "folder": folder}


def add_series(study: dict, folder: Path, seed: int, *, modality: str, series_number: int) -> dict:
    """A series of another modality in the same study (e.g. an MR or an SR beside the CT)."""
    paths = write_dicom_series(make_volume(seed, SHAPE), folder, seed=seed, modality=modality,
                               series_description=f"{modality.lower()} extra", series_number=series_number,
                               study_uid=study["study_uid"])
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(p)
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    return {"series_uid": uid, "files": paths}
