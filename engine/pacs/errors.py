"""The error every PACS problem becomes: one line naming the server (never a credential) and what went wrong."""

from __future__ import annotations

from engine.errors import SpeechCTError


class PacsError(SpeechCTError):
    """A PACS cannot be reached, refuses us, times out, or returns something unusable; or the PACS
    settings are wrong. ``path`` is the server's name or address (or the settings file)."""
