"""The header of a *plain* DICOM image file, read without pydicom.

Plain: a Part-10 file (preamble, "DICM", meta group) in Implicit or Explicit VR Little Endian, one
frame, a character set that is ASCII, Latin-1 or UTF-8, no modality LUT sequence. That is what
nearly every CT slice on disk is, and for it a header is a short loop over element headers that
stops at PixelData. Why by hand: importing pydicom and parsing each header with it were most of
the time to open a DICOM folder; this reader imports nothing beyond the standard library.

Anything else (compressed or big-endian syntaxes, multi-frame, other character sets, a file cut
short, a surprise in the byte stream) gives None, and the caller reads the file with pydicom, which
also names what is wrong with it. The elements kept are the top-level ones, with raw values;
sequences are skipped and only noted as present.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: The transfer syntaxes this reader takes: pixel values stored raw, little endian.
PLAIN_SYNTAXES = (EXPLICIT_LE, IMPLICIT_LE)

#: Explicit-VR value representations whose length field is 4 bytes (after 2 reserved bytes).
LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"SV", b"UN", b"UC", b"UR", b"UT", b"UV"})
#: The other value representations (2-byte length field).
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TRANSFER_SYNTAX = 0x00020010
_CHARSET, _NUMBER_OF_FRAMES, _MODALITY_LUT, _PER_FRAME = 0x00080005, 0x00280008, 0x00283000, 0x52009230
#: SpecificCharacterSet values (as Python codecs) whose text this reader decodes as pydicom does.
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
#: The keywords :func:`engine.io.dicom_scan.file_metadata` asks for by name (free text).
_KEYWORDS = {
    "SeriesDescription": 0x0008103E,
    "StudyDescription": 0x00081030,
    "Manufacturer": 0x00080070,
    "ConvolutionKernel": 0x00181210,
}
#: How much of a file is read at a time, and the most a header may take before giving up.
_CHUNK = 16384
_MAX_HEADER = 4 * 1024 * 1024
#: Undefined-length sequences nested deeper than this are left to pydicom (real headers nest a few levels).
_MAX_DEPTH = 32


class _Truncated(Exception):
    """The header runs past what was read or past the end of the file."""


class _NotPlain(Exception):
    """Something this reader leaves to pydicom."""


class PlainElement:
    """One top-level element: its raw value bytes (None for a sequence)."""

    __slots__ = ("value",)
    is_little_endian = True

    def __init__(self, value: bytes | None) -> None:
        self.value = value


class PlainHeader:
    """The top-level elements of a plain file, answering the few calls :mod:`engine.io.dicom_scan` makes
    of a pydicom dataset (``get_item``, ``in``, ``get`` by keyword for free text, the encoding flags)."""

    __slots__ = ("elements", "transfer_syntax", "is_implicit_VR", "codec", "pixel_start", "element_head")
    is_little_endian = True

    def __init__(self, elements: dict[int, PlainElement], transfer_syntax: str, codec: str,
                 pixel_start: int, element_head: bytes) -> None:
        self.elements = elements
        self.transfer_syntax = transfer_syntax
        self.is_implicit_VR = transfer_syntax == IMPLICIT_LE
        self.codec = codec
        self.pixel_start = pixel_start  # file offset of the PixelData element header
        self.element_head = element_head  # its first 12 bytes

    def get_item(self, tag: int) -> PlainElement | None:
        return self.elements.get(tag)

    def __contains__(self, tag: object) -> bool:
        return tag in self.elements

    def get(self, keyword: str) -> str | None:
        """Free text by keyword, decoded and split on backslashes as pydicom would (one value: a str)."""
        elem = self.elements.get(_KEYWORDS[keyword])
        if elem is None or elem.value is None:
            return None
        text = elem.value.decode(self.codec).rstrip(" \x00")
        return "\\".join(part.strip() for part in text.split("\\"))


class _Reader:
    """Bytes of one open file, read in chunks as the parse needs them."""

    def __init__(self, fp: BinaryIO, head: bytes) -> None:
        self.fp = fp
        self.buf = head

    def need(self, end: int) -> None:
        while len(self.buf) < end:
            if end > _MAX_HEADER:
                raise _NotPlain
            more = self.fp.read(max(_CHUNK, end - len(self.buf)))
            if not more:
                raise _Truncated
            self.buf += more


def read_plain_header(fp: BinaryIO, head: bytes) -> PlainHeader | None:
    """The header of the open file ``fp`` (``head``: its first bytes, already read, at least 132), or
    None when the file is not plain (see the module docstring) or cannot be parsed here."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    r = _Reader(fp, head)
    try:
        meta, pos = _elements(r, 132, explicit=True, meta_only=True)
        syntax_elem = meta.get(_TRANSFER_SYNTAX)
        if syntax_elem is None or syntax_elem.value is None:
            return None
        syntax = syntax_elem.value.decode("ascii").rstrip(" \x00")
        if syntax not in PLAIN_SYNTAXES:
            return None
        elements, pos = _elements(r, pos, explicit=syntax == EXPLICIT_LE, meta_only=False)
        r.need(pos + 12)
    except (_Truncated, _NotPlain, UnicodeDecodeError, struct.error):
        return None
    if _PIXEL_DATA not in elements or _MODALITY_LUT in elements:
        return None
    del elements[_PIXEL_DATA]
    if _text(elements, _NUMBER_OF_FRAMES) not in ("", "1") or _PER_FRAME in elements:
        return None  # multi-frame: functional groups are pydicom's
    codec = _CODECS.get(_text(elements, _CHARSET))
    if codec is None:
        return None
    try:  # free text that pydicom would decode with a complaint is left to it
        for tag in _KEYWORDS.values():
            if (elem := elements.get(tag)) is not None and elem.value is not None:
                elem.value.decode(codec)
    except UnicodeDecodeError:
        return None
    return PlainHeader(elements, syntax, codec, pos, bytes(r.buf[pos:pos + 12]))


def _text(elements: dict[int, PlainElement], tag: int) -> str:
    elem = elements.get(tag)
    return "" if elem is None or elem.value is None else elem.value.decode("latin-1").strip(" \x00")


def _elements(r: _Reader, pos: int, *, explicit: bool, meta_only: bool) -> tuple[dict[int, PlainElement], int]:
    """Top-level elements from ``pos``: up to the end of the meta group (``meta_only``) or up to and
    including the PixelData element's header (its value is not read); returns them and where they stop."""
    out: dict[int, PlainElement] = {}
    while True:
        r.need(pos + 8)
        group, element = struct.unpack_from("<HH", r.buf, pos)
        tag = group << 16 | element
        if meta_only and group != 0x0002:
            return out, pos
        if tag >= 0x7FE00000 or group == 0xFFFE:
            if tag == _PIXEL_DATA:
                out[tag] = PlainElement(None)
                return out, pos
            raise _NotPlain  # float pixel data, a stray delimiter: pydicom's to judge
        vr, length, value_start = _element_header(r, pos, explicit)
        if length == _UNDEFINED:
            if vr not in (b"SQ", None):
                raise _NotPlain  # UN or encapsulated data of undefined length
            out[tag] = PlainElement(None)
            pos = _skip_sequence(r, value_start, explicit, 1)
            continue
        end = value_start + length
        if vr == b"SQ":
            out[tag] = PlainElement(None)
        else:
            r.need(end)
            out[tag] = PlainElement(bytes(r.buf[value_start:end]))
        pos = end


def _element_header(r: _Reader, pos: int, explicit: bool) -> tuple[bytes | None, int, int]:
    """(VR or None for implicit VR, value length, where the value starts) of the element at ``pos``."""
    if not explicit:
        (length,) = struct.unpack_from("<I", r.buf, pos + 4)
        return None, length, pos + 8
    vr = bytes(r.buf[pos + 4:pos + 6])
    if vr in LONG_VRS:
        r.need(pos + 12)
        (length,) = struct.unpack_from("<I", r.buf, pos + 8)
        return vr, length, pos + 12
    if vr not in _SHORT_VRS:
        raise _NotPlain  # not a VR: the file is not encoded as its meta says (pydicom copes)
    (length,) = struct.unpack_from("<H", r.buf, pos + 6)
    return vr, length, pos + 8


def _skip_sequence(r: _Reader, pos: int, explicit: bool, depth: int) -> int:
    """Where an undefined-length sequence whose items start at ``pos`` ends (after its delimiter); ``depth``:
    how deep it is nested (a hostile file could nest until the interpreter's recursion limit)."""
    if depth > _MAX_DEPTH:
        raise _NotPlain
    while True:
        r.need(pos + 8)
        tag = struct.unpack_from("<HH", r.buf, pos)
        tag_int = tag[0] << 16 | tag[1]
        (length,) = struct.unpack_from("<I", r.buf, pos + 4)
        pos += 8
        if tag_int == _SEQUENCE_END:
            return pos
        if tag_int != _ITEM:
            raise _NotPlain
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(r, pos, explicit, depth)


def _skip_item(r: _Reader, pos: int, explicit: bool, depth: int) -> int:
    """Where an undefined-length item whose elements start at ``pos`` ends (after its delimiter)."""
    while True:
        r.need(pos + 8)
        group, element = struct.unpack_from("<HH", r.buf, pos)
        if (group << 16 | element) == _ITEM_END:
            return pos + 8
        vr, length, value_start = _element_header(r, pos, explicit)
        if length == _UNDEFINED:
            if vr not in (b"SQ", None):
                raise _NotPlain
            pos = _skip_sequence(r, value_start, explicit, depth + 1)
        else:
            pos = value_start + length
