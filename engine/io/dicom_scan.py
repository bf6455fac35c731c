"""Pass 1 of DICOM reading: find files and read their headers (never their pixels).

Every frame that could become a slice is described by a :class:`SliceHeader`; a classic
single-frame file gives one, an Enhanced (multi-frame) file gives one per frame with the
per-frame functional groups resolved against the shared ones. Files that are not DICOM,
hold no image, or cannot be parsed are sorted into :class:`DicomHeaders`' other lists so
that callers can count and report them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import StudyError
from engine.io.dicom_plain_header import EXPLICIT_LE, IMPLICIT_LE, LONG_VRS, PLAIN_SYNTAXES, read_plain_header

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: More frames than this in one file is a corrupt NumberOfFrames (a long multi-frame CT has a few thousand).
MAX_FRAMES = 100_000
#: Transfer syntaxes whose pixel bytes can be read straight into a numpy array.
RAW_LITTLE_ENDIAN = PLAIN_SYNTAXES


@dataclass(slots=True)
class SliceHeader:
    """One image frame, as far as the header describes it. Positions are LPS mm."""

    path: str
    frame: int | None  # frame index inside a multi-frame file; None for single-frame files
    n_frames: int
    series_uid: str
    modality: str
    sop_class: str
    image_type: str
    acquisition: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # the 6 ImageOrientationPatient cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    slice_thickness: float | None
    slope: float
    intercept: float
    has_modality_lut: bool
    instance_number: int
    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples_per_pixel: int
    photometric: str
    #: Byte offset of the pixel values (after the element header) for uncompressed data, else None.
    pixel_offset: int | None
    meta: dict  # safe metadata of the file (engine.volume.SAFE_METADATA_KEYS names)


@dataclass
class DicomHeaders:
    """The DICOM headers pass 1 read under a path (slices), and the files it could not use."""

    root: str
    slices: list[SliceHeader] = field(default_factory=list)
    non_dicom: list[str] = field(default_factory=list)
    non_image: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    n_files: int = 0


def list_files(path: str | Path) -> list[str]:
    """All regular files under ``path`` (recursive, sorted, hidden files and folders skipped as
    :func:`engine.io.sniff.scan_folder` skips them), or ``[path]`` for a file.

    Pipes, sockets and devices are left out: opening a FIFO blocks forever.
    """
    path = Path(path)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise StudyError("no such file or folder", path)
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            full for full in (os.path.join(dirpath, name) for name in sorted(filenames) if not name.startswith("."))
            if os.path.isfile(full)
        )
    return found


def scan(path: str | Path, workers: int | None = None, *, files: list[str] | None = None,
         n_files: int | None = None) -> DicomHeaders:
    """Read the header of every file under ``path`` (threads: file I/O overlaps parsing), or of ``files``
    when the caller already walked the folder (``n_files``: how many files that walk found in all)."""
    files = list_files(path) if files is None else [str(f) for f in files]
    result = DicomHeaders(root=str(path), n_files=len(files) if n_files is None else n_files)
    workers = default_workers(workers)
    meta_cache: dict = {}
    if workers > 1 and len(files) > 8:
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(lambda f: read_header(f, meta_cache), files, chunksize=16))
    else:
        outcomes = [read_header(f, meta_cache) for f in files]
    for file, (kind, payload) in zip(files, outcomes):
        if kind == "image":
            result.slices.extend(payload)
        elif kind == "non_dicom":
            result.non_dicom.append(file)
        elif kind == "non_image":
            result.non_image.append((file, payload))
        else:
            result.unreadable.append((file, payload))
    return result


def default_workers(workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    return max(1, min(8, os.cpu_count() or 1))


def _looks_like_dicom(head: bytes) -> tuple[bool, bool]:
    """(is DICOM, needs force) from the first 132 bytes of a file."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True, False
    # Files without the preamble (old ACR-NEMA style) start with a group 0x0008 or 0x0002 tag.
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
        return True, True
    return False, False


def read_header(path: str, meta_cache: dict | None = None) -> tuple[str, object]:
    """Classify one file by its header, read once: plain files (:mod:`engine.io.dicom_plain_header`)
    without pydicom, the rest with it.

    Returns ("image", [SliceHeader, …]), ("non_dicom", None), ("non_image", why) or ("unreadable", why).
    """
    try:
        with open(path, "rb") as fp:
            head = fp.read(16384)
            is_dicom, force = _looks_like_dicom(head)
            if not is_dicom:
                return "non_dicom", None
            file_size = os.fstat(fp.fileno()).st_size
            plain = read_plain_header(fp, head)
            if plain is None:
                return _read_with_pydicom(path, fp, force, file_size, meta_cache)
    except OSError as exc:
        return "unreadable", f"cannot open ({exc.strerror or exc})"
    return _checked_describe(path, plain, plain.transfer_syntax, False, plain.pixel_start, plain.element_head,
                             file_size, meta_cache)


def _read_with_pydicom(path: str, fp, force: bool, file_size: int, meta_cache: dict | None) -> tuple[str, object]:
    """:func:`read_header` for what the plain reader leaves: compressed, big endian, deflated, multi-frame,
    other character sets, damaged files (pydicom names what is wrong)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error, OverflowError) as exc:
        return "unreadable", f"cannot parse DICOM header ({_short(exc)})"
    except RecursionError:  # pydicom reads nested sequences recursively
        return "unreadable", "cannot parse DICOM header (sequences nested too deep)"
    pixel_start = fp.tell()
    element_head = fp.read(12)
    syntax = _syntax(ds)
    if syntax == DEFLATED_LE:
        # pydicom read an inflated copy, so fp says nothing about the pixel data: peek in it.
        fp.seek(0)
        full = pydicom.dcmread(fp, force=force, specific_tags=["PixelData"])
        element_head = _PIXEL_TAG_LE if "PixelData" in full else b""
    return _checked_describe(path, ds, syntax, syntax.is_encapsulated, pixel_start, element_head, file_size,
                             meta_cache)


def _checked_describe(path: str, ds, syntax: str, encapsulated: bool, pixel_start: int, element_head: bytes,
                      file_size: int, meta_cache: dict | None) -> tuple[str, object]:
    try:
        return _describe(path, ds, syntax, encapsulated, pixel_start, element_head, file_size, meta_cache)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        return "unreadable", f"malformed header ({_short(exc)})"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _syntax(ds):
    """The transfer syntax of a pydicom dataset (a pydicom UID)."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(syntax)
    # No meta: pydicom guessed the encoding while reading.
    if ds.is_little_endian is False:
        return UID(EXPLICIT_BE)
    return UID(IMPLICIT_LE if ds.is_implicit_VR else EXPLICIT_LE)


def _pixel_value_offset(
    syntax: str, encapsulated: bool, encoding: tuple, element_head: bytes, pixel_start: int, file_size: int,
    n_bytes: int,
):
    """(offset of the raw pixel values or None, problem or None) from the PixelData element header."""
    if syntax == EXPLICIT_BE:
        tag_ok = element_head[:4] == _PIXEL_TAG_BE
    else:
        tag_ok = element_head[:4] == _PIXEL_TAG_LE
    if not tag_ok:
        return None, "no pixel data"
    if encapsulated or syntax not in (*RAW_LITTLE_ENDIAN, EXPLICIT_BE):
        return None, None  # compressed or deflated: pydicom decodes later
    if encoding != (syntax == IMPLICIT_LE, syntax != EXPLICIT_BE):
        return None, None  # the file is not encoded as its meta says: let pydicom cope
    if syntax == IMPLICIT_LE:
        (length,) = struct.unpack("<I", element_head[4:8])
        value_start = pixel_start + 8
    else:
        endian = ">" if syntax == EXPLICIT_BE else "<"
        if element_head[4:6] in LONG_VRS:
            (length,) = struct.unpack(endian + "I", element_head[8:12])
            value_start = pixel_start + 12
        else:
            (length,) = struct.unpack(endian + "H", element_head[6:8])
            value_start = pixel_start + 8
    if length == _UNDEFINED_LENGTH:
        return None, None
    if value_start + min(length, n_bytes) > file_size or length < n_bytes:
        have = max(0, file_size - value_start)
        return None, f"truncated pixel data ({min(have, length)} of {n_bytes} bytes)"
    if syntax == EXPLICIT_BE:
        return None, None  # complete, but byte-swapped: pydicom decodes it
    return value_start, None


def _float(value, default=None):
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _floats(value, n: int):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int(value, default=0):
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError, OverflowError):  # OverflowError: "inf" in an IS field
        return default


def _is_multi(value) -> bool:
    """A list of values (pydicom's MultiValue is a Sequence), not one str or bytes value."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _text(value) -> str:
    if value is None:
        return ""
    if _is_multi(value):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


class _Fields:
    """Header values straight from raw elements (pydicom's, or :class:`~engine.io.dicom_plain_header.PlainHeader`'s).

    Why by hand: pydicom's per-element conversion (``ds.get``) was two thirds of the header
    pass; the few numeric/ASCII values a slice needs decode in microseconds from raw bytes.
    Text that may use a character set (descriptions) goes through the header's own decoding (``ds.get``).
    """

    __slots__ = ("ds",)

    def __init__(self, ds) -> None:
        self.ds = ds

    def strings(self, tag: int) -> list[str] | None:
        elem = self.ds.get_item(tag)
        if elem is None:
            return None
        value = elem.value
        if isinstance(value, bytes):
            text = value.decode("latin-1").strip(" \x00")
            return [v.strip(" \x00") for v in text.split("\\")] if text else []
        if value is None:
            return []
        if _is_multi(value):
            return [str(v).strip() for v in value]
        return [str(value).strip()]

    def text(self, tag: int) -> str:
        values = self.strings(tag)
        return "\\".join(values) if values else ""

    def floats(self, tag: int, n: int) -> tuple[float, ...] | None:
        values = self.strings(tag)
        if not values or len(values) != n:
            return None
        try:
            return tuple(float(v) for v in values)
        except ValueError:
            return None

    def float(self, tag: int, default=None):
        values = self.strings(tag)
        try:
            return float(values[0]) if values else default
        except ValueError:
            return default

    def int(self, tag: int, default=0):
        """An IS (text) or US (binary, 2 bytes) value."""
        elem = self.ds.get_item(tag)
        if elem is None:
            return default
        value = elem.value
        if isinstance(value, bytes) and tag in _US_TAGS and len(value) == 2:  # US, also when stored as UN
            return struct.unpack("<H" if elem.is_little_endian else ">H", value)[0]
        if isinstance(value, int):
            return value
        values = self.strings(tag)
        try:
            return int(float(values[0])) if values else default
        except (ValueError, OverflowError):  # OverflowError: "inf" where a count belongs
            return default


#: Tags read above (group, element as one int) and the US-valued ones among them.
_ROWS, _COLUMNS = 0x00280010, 0x00280011
_BITS_ALLOCATED, _BITS_STORED, _PIXEL_REPRESENTATION = 0x00280100, 0x00280101, 0x00280103
_SAMPLES_PER_PIXEL, _PHOTOMETRIC = 0x00280002, 0x00280004
_US_TAGS = {_ROWS, _COLUMNS, _BITS_ALLOCATED, _BITS_STORED, _PIXEL_REPRESENTATION, _SAMPLES_PER_PIXEL}
_SOP_CLASS, _MODALITY, _SERIES_UID = 0x00080016, 0x00080060, 0x0020000E
_IMAGE_TYPE, _ACQUISITION, _INSTANCE = 0x00080008, 0x00200012, 0x00200013
_NUMBER_OF_FRAMES, _SLICE_THICKNESS = 0x00280008, 0x00180050
_POSITION, _ORIENTATION, _PIXEL_SPACING = 0x00200032, 0x00200037, 0x00280030
_SLOPE, _INTERCEPT = 0x00281053, 0x00281052
_MODALITY_LUT, _PER_FRAME = 0x00283000, 0x52009230
#: Tags behind file_metadata(); files whose raw values agree share one decoded dict.
_META_TAGS = (
    0x00080005,
    0x00080060,
    0x0020000D,
    0x0020000E,
    0x00200052,
    0x0008103E,
    0x00081030,
    0x00080020,
    0x00200011,
    0x00080070,
    0x00180015,
    0x00181210,
)


def _meta_key(ds) -> tuple:
    key = []
    for tag in _META_TAGS:
        elem = ds.get_item(tag)
        key.append(
            None if elem is None else (elem.value if isinstance(elem.value, bytes) else repr(elem.value))
        )
    return tuple(key)


def file_metadata(ds) -> dict:
    """Safe, non-identifying metadata of one dataset (keys of engine.volume.SAFE_METADATA_KEYS).

    ASCII-only values (UIDs, codes, dates, numbers) come raw; free text is decoded by the header
    (pydicom, or the plain reader) for its character set.
    """
    f = _Fields(ds)
    meta = {
        "modality": f.text(_MODALITY),
        "study_uid": f.text(0x0020000D),
        "series_uid": f.text(_SERIES_UID),
        "frame_of_reference_uid": f.text(0x00200052),
        "series_description": _text(ds.get("SeriesDescription")),
        "study_description": _text(ds.get("StudyDescription")),
        "study_date": f.text(0x00080020),
        "series_number": f.int(0x00200011, None),
        "manufacturer": _text(ds.get("Manufacturer")),
        "body_part": f.text(0x00180015),
        "kernel": _text(ds.get("ConvolutionKernel")),
    }
    return {k: v for k, v in meta.items() if v not in ("", None)}


def _describe(
    path: str, ds, syntax: str, encapsulated: bool, pixel_start: int, element_head: bytes, file_size: int,
    meta_cache: dict | None = None,
) -> tuple[str, object]:
    """The slices of one header (a pydicom dataset or a :class:`~engine.io.dicom_plain_header.PlainHeader`)."""
    f = _Fields(ds)
    rows, columns = f.int(_ROWS), f.int(_COLUMNS)
    if element_head[:4] not in (_PIXEL_TAG_LE, _PIXEL_TAG_BE) or not rows or not columns:
        sop = f.text(_SOP_CLASS) or _text(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID"))
        from pydicom.uid import UID

        name = UID(sop).name if sop else "unknown SOP class"
        # pydicom stops quietly at the end of a file: an image header that just ends was cut short.
        if not element_head and (rows or not f.text(_SOP_CLASS) or "Image Storage" in name):
            return "unreadable", f"truncated file? it ends inside its header, before any pixel data ({name})"
        return "non_image", f"no pixel data (not an image: {name})"
    n_frames = max(1, f.int(_NUMBER_OF_FRAMES, 1))
    if n_frames > min(MAX_FRAMES, file_size):  # a corrupt count: one header per frame would never end
        return "unreadable", f"NumberOfFrames {n_frames} cannot be in a file of {file_size} bytes"
    bits_allocated = f.int(_BITS_ALLOCATED, 16)
    samples = f.int(_SAMPLES_PER_PIXEL, 1)
    n_bytes = rows * columns * samples * n_frames * bits_allocated // 8
    if f.text(_PHOTOMETRIC) == "YBR_FULL_422":
        n_bytes = n_bytes * 2 // 3  # chroma shared by pixel pairs: 2 samples per pixel, not 3
    encoding = (ds.is_implicit_VR, ds.is_little_endian)  # as pydicom actually read the dataset
    offset, problem = _pixel_value_offset(syntax, encapsulated, encoding, element_head, pixel_start, file_size,
                                          n_bytes)
    if problem:
        return "unreadable", problem
    if bits_allocated not in (8, 16, 32) and not encapsulated:
        offset = None  # 1-bit or odd packing: leave it to pydicom
    if meta_cache is None:
        meta = file_metadata(ds)
    else:
        key = _meta_key(ds)
        meta = meta_cache.get(key)
        if meta is None:
            meta = meta_cache.setdefault(key, file_metadata(ds))
    common = dict(
        path=path,
        n_frames=n_frames,
        series_uid=f.text(_SERIES_UID) or f"(no SeriesInstanceUID) {path}",
        modality=f.text(_MODALITY).upper(),
        sop_class=f.text(_SOP_CLASS),
        rows=rows,
        columns=columns,
        has_modality_lut=_MODALITY_LUT in ds,
        instance_number=f.int(_INSTANCE, 0),
        transfer_syntax=str(syntax),
        bits_allocated=bits_allocated,
        bits_stored=f.int(_BITS_STORED, bits_allocated),
        signed=f.int(_PIXEL_REPRESENTATION, 0) == 1,
        samples_per_pixel=samples,
        photometric=f.text(_PHOTOMETRIC),
        pixel_offset=offset,
        meta=meta,
    )
    image_type = f.text(_IMAGE_TYPE)
    acquisition = f.text(_ACQUISITION)
    thickness = f.float(_SLICE_THICKNESS)
    if n_frames == 1 and _PER_FRAME not in ds:
        header = SliceHeader(
            frame=None,
            image_type=image_type,
            acquisition=acquisition,
            position=f.floats(_POSITION, 3),
            orientation=f.floats(_ORIENTATION, 6),
            pixel_spacing=f.floats(_PIXEL_SPACING, 2),
            slice_thickness=thickness,
            slope=f.float(_SLOPE, 1.0),
            intercept=f.float(_INTERCEPT, 0.0),
            **common,
        )
        return "image", [header]
    return "image", _frames(ds, common, image_type, acquisition, thickness)


def _group_item(ds, group: str, index: int | None, shared):
    """The first item of functional group ``group`` for frame ``index`` (per-frame wins over shared)."""
    if index is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and index < len(per_frame) and group in per_frame[index]:
            seq = per_frame[index][group]
            if len(seq.value):
                return seq.value[0]
    if shared is not None and group in shared and len(shared[group].value):
        return shared[group].value[0]
    return None


def _frames(ds, common: dict, image_type: str, acquisition: str, thickness) -> list[SliceHeader]:
    """One header per frame of a multi-frame file (Enhanced CT or legacy multi-frame)."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
    headers = []
    for i in range(common["n_frames"]):
        position_item = _group_item(ds, "PlanePositionSequence", i, shared)
        orientation_item = _group_item(ds, "PlaneOrientationSequence", i, shared)
        measures = _group_item(ds, "PixelMeasuresSequence", i, shared)
        transform = _group_item(ds, "PixelValueTransformationSequence", i, shared)
        frame_type = _group_item(ds, "CTImageFrameTypeSequence", i, shared)
        content = _group_item(ds, "FrameContentSequence", i, None)
        position = position_item.get("ImagePositionPatient") if position_item is not None else None
        if position is None and common["n_frames"] == 1:
            position = ds.get("ImagePositionPatient")
        orientation = (
            orientation_item.get("ImageOrientationPatient") if orientation_item is not None else None
        )
        source = transform if transform is not None else ds
        headers.append(
            SliceHeader(
                frame=i,
                image_type=_text(frame_type.get("FrameType")) if frame_type is not None else image_type,
                acquisition=_frame_acquisition(content, acquisition),
                position=_floats(position, 3),
                orientation=_floats(
                    orientation if orientation is not None else ds.get("ImageOrientationPatient"), 6
                ),
                pixel_spacing=_floats(
                    measures.get("PixelSpacing") if measures is not None else ds.get("PixelSpacing"), 2
                ),
                slice_thickness=_float(measures.get("SliceThickness")) if measures is not None else thickness,
                slope=_float(source.get("RescaleSlope"), 1.0),
                intercept=_float(source.get("RescaleIntercept"), 0.0),
                **common,
            )
        )
    return headers


def _frame_acquisition(content, default: str) -> str:
    """Temporal position (4-D series) or frame acquisition number: what splits repeated positions."""
    if content is None:
        return default
    temporal = content.get("TemporalPositionIndex")
    if temporal is not None:
        return f"t{int(temporal)}"
    number = content.get("FrameAcquisitionNumber")
    return default if number is None else str(int(number))
