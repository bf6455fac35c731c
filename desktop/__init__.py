"""SpeechCT desktop app (PySide6 + VTK). Imports ``engine`` only."""
