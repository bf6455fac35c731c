"""Errors and warnings that the engine raises.

Every error a user can cause carries one line that names the file and the problem;
the CLI prints ``str(error)`` and exits with code 2, never a traceback.
"""

from __future__ import annotations

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
