"""Tell file formats apart by their first bytes, not by their names.

``sniff(path)`` answers "dicom", "nifti" (single file, NIfTI-1 or -2, plain or gzip),
"nifti-pair" (a ``.hdr`` of a header/image pair) or raises StudyError with one line
saying what the file looks like instead (empty, PNG, text, truncated gzip, ...).
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import StudyError, one_line  # noqa: F401 (one_line: re-exported)

#: Enough bytes for a NIfTI-2 header (540) plus its 4-byte extension flag.
HEAD_BYTES = 544

_NIFTI1_MAGICS = {b"n+1\x00": "nifti", b"ni1\x00": "nifti-pair"}
_NIFTI2_MAGICS = {b"n+2\x00": "nifti", b"ni2\x00": "nifti-pair"}

# Other formats people drop into study folders, so that the error says what the file is.
_OTHER_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF (e.g. WAV) file"),
)

#: Value representations of DICOM, for recognising explicit-VR files that lack the preamble.
_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}




def read_head(path: Path, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of ``path``; OS errors become StudyError naming the path.

    Only regular files are opened: reading a FIFO or a character device would block or never end.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise StudyError("is a folder, expected a file", path)
        if not stat.S_ISREG(mode):
            raise StudyError("is not a regular file (a pipe, socket or device)", path)
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise os_study_error(exc, path) from exc


def os_study_error(exc: OSError, path: Path, verb: str = "read", done: str = "read") -> StudyError:
    """The one-line StudyError for an OS error on ``path`` (``verb`` / ``done``: what could not be done to it,
    e.g. "access" / "accessed")."""
    if isinstance(exc, FileNotFoundError):
        return StudyError("does not exist (or is a broken link)", path)
    if isinstance(exc, PermissionError):
        return StudyError(f"permission denied (cannot {verb} it)", path)
    if isinstance(exc, IsADirectoryError):
        return StudyError("is a folder, expected a file", path)
    return StudyError(f"cannot be {done} ({one_line(exc.strerror or exc)})", path)


def _gunzip_head(path: Path, n: int) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise StudyError(f"gzip stream is truncated or corrupt ({one_line(exc)})", path) from exc


def nifti_kind(head: bytes) -> str | None:
    """"nifti" / "nifti-pair" when ``head`` (uncompressed) starts a NIfTI header, else None.

    Raises nothing: a 348-byte header with a wrong magic is reported by :func:`sniff`.
    """
    if len(head) >= 348:
        for endian in "<>":
            (size,) = struct.unpack(endian + "i", head[:4])
            if size == 348 and head[344:348] in _NIFTI1_MAGICS:
                return _NIFTI1_MAGICS[head[344:348]]
            if size == 540 and head[4:8] in _NIFTI2_MAGICS:
                return _NIFTI2_MAGICS[head[4:8]]
    return None


def _header_size(head: bytes) -> int | None:
    if len(head) < 4:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size in (348, 540):
            return size
    return None


def is_dicom_head(head: bytes) -> bool:
    """True for Part-10 files ("DICM" at byte 128) and for bare datasets without the preamble.

    A bare dataset must start with a little-endian tag of group 0x0002 or 0x0008 (the
    groups every CT image begins with), followed by an explicit VR or a sane implicit length.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, _element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1024  # implicit VR: the first element is short (e.g. a CS or UI)


def describe(head: bytes) -> str:
    """A few words on what a non-DICOM, non-NIfTI file looks like."""
    for sig, what in _OTHER_SIGNATURES:
        if head.startswith(sig):
            return what
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file that holds no NIfTI header"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A cut multi-byte character at the end of the head is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return "an unrecognised binary file"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return "an unrecognised binary file"


@dataclass
class FolderFormats:
    """The files of a folder (searched recursively, hidden entries skipped) by sniffed format: what it holds."""

    dicom: list[Path] = field(default_factory=list)
    nifti: list[Path] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.dicom) + len(self.nifti) + len(self.other) + len(self.unreadable)

    def add(self, path: Path, kind: str, why: str | None) -> None:
        """File ``path`` as :func:`classify` found it."""
        if kind == "dicom":
            self.dicom.append(path)
        elif kind in ("nifti", "nifti-pair"):
            self.nifti.append(path)
        elif kind == "unreadable":
            self.unreadable.append((path, why or "cannot be read"))
        else:
            self.other.append(path)


def sniff(path: Path) -> str:
    """Format of the file at ``path``: "dicom", "nifti" or "nifti-pair".

    Anything else raises StudyError with one line: empty, wrong NIfTI magic, truncated gzip,
    or what the file seems to be (PNG, text, ...).
    """
    return sniff_head(path, read_head(path))


def sniff_head(path: Path, head: bytes) -> str:
    """:func:`sniff` on the file's first bytes, already read (``head``: :func:`read_head`)."""
    if not head:
        raise StudyError("file is empty (0 bytes)", path)
    if head.startswith(b"\x1f\x8b"):
        inner = _gunzip_head(path, HEAD_BYTES)
        kind = nifti_kind(inner)
        if kind == "nifti":
            return kind
        if _header_size(inner) is not None:
            raise StudyError(f"not a NIfTI file: wrong magic {inner[344:348]!r} in the gzip-ed header", path)
        raise StudyError("not a DICOM or NIfTI file (a gzip file that holds no NIfTI header)", path)
    kind = nifti_kind(head)
    if kind is not None:
        return kind
    if is_dicom_head(head):
        return "dicom"
    size = _header_size(head)
    if size == 348 and len(head) >= 348:
        raise StudyError(
            f"not a NIfTI file: header size says NIfTI-1 but the magic is {head[344:348]!r} "
            "(expected b'n+1\\x00'; Analyze 7.5 files are not supported)",
            path,
        )
    if size == 540 and len(head) >= 12:
        raise StudyError(f"not a NIfTI file: header size says NIfTI-2 but the magic is {head[4:8]!r}", path)
    if size is not None:
        raise StudyError(f"NIfTI header is truncated ({len(head)} bytes)", path)
    raise StudyError(f"not a DICOM or NIfTI file (looks like {describe(head)})", path)


def scan_folder(folder: Path) -> FolderFormats:
    """Sniff every file below ``folder``; files that fail to sniff go to ``other``/``unreadable``."""
    scan = FolderFormats()
    try:
        for root, dirs, files in os.walk(folder, onerror=_raise_walk_error):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # prunes the walk in place
            for name in sorted(files):
                if not name.startswith("."):
                    path = Path(root) / name
                    scan.add(path, *classify(path))
    except OSError as exc:
        where = exc.filename or folder
        raise StudyError(f"folder cannot be listed ({one_line(exc.strerror or exc)})", where) from exc
    return scan


def classify(path: Path) -> tuple[str, str | None]:
    """(kind, why) of one file from one read of its first bytes: kind "dicom", "nifti" or "nifti-pair"
    (why None), "other" (why: :func:`sniff`'s line on what it is instead) or "unreadable" (why: the OS error)."""
    try:
        head = read_head(path)
    except StudyError as exc:
        return "unreadable", exc.message
    try:
        return sniff_head(path, head), None
    except StudyError as exc:
        return "other", exc.message


def _raise_walk_error(exc: OSError) -> None:
    raise exc
