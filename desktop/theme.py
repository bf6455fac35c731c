"""The reading-room theme: a dark Fusion palette for the whole window (reading rooms are dark, and
a bright panel beside a lung window dazzles), applied once to the QApplication."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

BASE = QColor(30, 31, 34)
WINDOW = QColor(40, 42, 46)
TEXT = QColor(220, 222, 226)
DIM = QColor(130, 134, 140)
ACCENT = QColor(70, 130, 200)


def dark_palette() -> QPalette:
    p = QPalette()
    roles = QPalette.ColorRole
    for role, colour in ((roles.Window, WINDOW), (roles.WindowText, TEXT), (roles.Base, BASE),
                         (roles.AlternateBase, QColor(36, 38, 42)), (roles.ToolTipBase, QColor(50, 52, 58)),
                         (roles.ToolTipText, TEXT), (roles.Text, TEXT), (roles.Button, QColor(52, 55, 60)),
                         (roles.ButtonText, TEXT), (roles.BrightText, QColor(255, 90, 90)),
                         (roles.Highlight, ACCENT), (roles.HighlightedText, QColor(255, 255, 255)),
                         (roles.Link, QColor(110, 170, 240)), (roles.PlaceholderText, DIM)):
        p.setColor(role, colour)
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, DIM)
    return p


def apply_dark(app) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 80
