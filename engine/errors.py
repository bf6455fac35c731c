"""Errors and warnings that the engine raises.

Every error a user can cause carries one line that names the file and the problem;
the CLI prints ``str(error)`` and exits with code 2, never a traceback.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


class SpeechCTError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class StudyError(SpeechCTError):
    """A CT study (DICOM or NIfTI) cannot be read or is not a usable CT volume."""


class AudioError(SpeechCTError):
    """An audio file or stream cannot be read or is unusable."""


class BundleError(SpeechCTError):
    """A model bundle is missing, corrupt, or does not match its backbones."""


class WeightsError(SpeechCTError):
    """A foreign checkpoint or backbone (CT-CLIP, Whisper, BERT) cannot be read or mapped."""


class DataError(SpeechCTError):
    """A dataset tree (CT-RATE or Speech-RATE layout) is missing files or disagrees with itself."""


class SpeechCTWarning(UserWarning):
    """Something the user should know about the input that was not 'fixed' silently.

    Tests turn these into errors (see pyproject's filterwarnings) so that a new warning
    is always a deliberate, tested event.
    """


def printable(text: object, *, newlines: bool = True) -> str:
    """``text`` safe to print on a terminal: newlines and tabs kept; every other control or format
    character (ANSI escapes, carriage returns, bidi overrides) written as ``\\xNN`` / ``\\uNNNN``;
    bytes of a file name that is not valid UTF-8 (Python's surrogate escapes) as ``\\xNN``.

    ``newlines=False``: newlines and tabs are escaped too (one value, one line).
    Printing a surrogate would raise UnicodeEncodeError; printing an escape sequence from a DICOM
    description or a bundle name would let a file drive the user's terminal.
    """
    text = str(text)
    if text.isprintable():
        return text
    keep = "\n\t" if newlines else ""
    out = []
    for ch in text:
        if ch in keep or ch.isprintable() or ch == " ":
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # os.fsdecode's escape of an undecodable byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Zs", "Zl", "Zp"):
            out.append(" ")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def one_line(text: object, limit: int = 200) -> str:
    """An exception's (or any) text on one printable line (libraries put newlines in theirs), cut to
    ``limit`` characters (0: no limit)."""
    line = printable(" ".join(str(text).split()))
    return line if not limit or len(line) <= limit else line[: limit - 1] + "…"
