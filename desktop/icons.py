"""The application icon drawn by scripts/make_icons.py (assets/icons/speechct*.png, 256/64/32 px)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QIcon

ICONS_DIR = Path(__file__).resolve().parents[1] / "assets" / "icons"
ICON_FILES = ("speechct.png", "speechct-64.png", "speechct-32.png")


def app_icon() -> QIcon:
    """Every committed size in one QIcon (Qt picks the nearest); a null icon if none is installed."""
    icon = QIcon()
    for name in ICON_FILES:
        if (ICONS_DIR / name).is_file():
            icon.addFile(str(ICONS_DIR / name))
    return icon
