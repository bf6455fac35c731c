"""The mentions file: what each report says about each of the 18 findings, in four states.

``dataset/multi_abnormality_labels/{split}_mentions_chexpert.csv``: ``VolumeName`` then one column per
finding, coded as the CheXpert labeler codes its output:

====== ==============================================================
``1``  present (stated, or a pseudo-negation such as "stable effusion")
``-1`` uncertain (hedged: "possible", "cannot be excluded", "likely")
``0``  absent (negated, or settled by a normal statement)
empty  not mentioned
====== ==============================================================

In memory a mention is its class index into :data:`engine.labels.DICTATION_CLASSES` (0 present,
1 uncertain, 2 absent, 3 not mentioned), int8. The three-state file of earlier synthetic sets
(``{split}_mentions.csv``, where ``-1`` meant *not mentioned*) is refused: read with this coding it
would turn every unmentioned finding into an uncertain one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine.errors import DataError
from engine.labels import DICTATION_CLASSES, LABELS

MENTIONS_FILE = {"train": "train_mentions_chexpert.csv", "valid": "valid_mentions_chexpert.csv"}
LEGACY_MENTIONS_FILE = {"train": "train_mentions.csv", "valid": "valid_mentions.csv"}
#: CSV code -> state, and back.
CODE_TO_STATE = {"1": "present", "-1": "uncertain", "0": "absent", "": "not mentioned"}
STATE_TO_CODE = {v: k for k, v in CODE_TO_STATE.items()}
STATE_INDEX = {s: i for i, s in enumerate(DICTATION_CLASSES)}
PRESENT, UNCERTAIN, ABSENT, NOT_MENTIONED = (STATE_INDEX[s] for s in DICTATION_CLASSES)


def mentions_path(dataset_dir: Path, split: str) -> Path:
    return Path(dataset_dir) / "multi_abnormality_labels" / MENTIONS_FILE[split]


def encode(states: dict[str, str]) -> dict[str, str]:
    """{label: state} -> the CSV's codes, every label present."""
    return {lab: STATE_TO_CODE[states.get(lab, "not mentioned")] for lab in LABELS}


def to_indices(states: dict[str, str]) -> np.ndarray:
    return np.array([STATE_INDEX[states.get(lab, "not mentioned")] for lab in LABELS], dtype=np.int8)


def _normalise(code: str) -> str:
    c = (code or "").strip()
    try:
        return "" if c == "" else str(int(float(c)))  # "1.0" / "-1.0" as CheXpert's own CSVs write them
    except ValueError:
        return c


def read_mentions(dataset_dir: Path, split: str) -> dict[str, np.ndarray] | None:
    """VolumeName -> int8 class indices, or None when the split has no mentions file.

    Raises DataError for the legacy three-state file, wrong columns or a code outside the table."""
    path = mentions_path(dataset_dir, split)
    if not path.is_file():
        legacy = Path(dataset_dir) / "multi_abnormality_labels" / LEGACY_MENTIONS_FILE[split]
        if legacy.is_file():
            raise DataError(f"three-state mentions file ({LEGACY_MENTIONS_FILE[split]}: -1 meant 'not mentioned') "
                            f"is no longer read; regenerate the data with 'speechct-train synth' or write "
                            f"{MENTIONS_FILE[split]} with 'speechct-train label-mentions'", legacy)
        return None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("VolumeName", *LABELS) if c not in header]
        if missing:
            raise DataError(f"mentions file lacks column(s) {missing}", path)
        out: dict[str, np.ndarray] = {}
        for line, row in enumerate(reader, start=2):
            name = (row["VolumeName"] or "").strip()
            if not name:
                raise DataError(f"line {line}: empty VolumeName", path)
            if name in out:
                raise DataError(f"line {line}: VolumeName {name!r} appears twice", path)
            values = []
            for lab in LABELS:
                code = _normalise(row[lab])
                if code not in CODE_TO_STATE:
                    raise DataError(f"line {line}: {lab} has code {row[lab]!r}; allowed 1, -1, 0 or empty", path)
                values.append(STATE_INDEX[CODE_TO_STATE[code]])
            out[name] = np.array(values, dtype=np.int8)
    return out


def mentions_csv_bytes(rows: list[tuple[str, dict[str, str]]]) -> bytes:
    """The file's bytes for (VolumeName, {label: state}) rows (the caller writes them atomically)."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["VolumeName", *LABELS], lineterminator="\n")
    w.writeheader()
    for name, states in rows:
        w.writerow({"VolumeName": name, **encode(states)})
    return buf.getvalue().encode()
