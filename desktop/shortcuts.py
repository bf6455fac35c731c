"""Every keyboard and mouse shortcut of the app in one table, shown by F1 / Help ▸ Shortcuts."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("Slices", "Wheel, Up / Down", "one slice (Shift: 10)"),
    ("Slices", "Page Up / Page Down", "10 slices"),
    ("Slices", "Home / End", "first / last slice"),
    ("Slices", "Left click", "move the linked crosshair"),
    ("Window", "Left drag", "window (horizontal) and level (vertical)"),
    ("Window", "1 / 2 / 3", "Lung / Mediastinum / Bone presets"),
    ("View", "Right drag, Ctrl+wheel", "zoom"),
    ("View", "Middle drag", "pan"),
    ("View", "r", "reset crosshair, window, zoom and pan"),
    ("View", "Double click", "maximise a view / back to four-up"),
    ("Tools", "m", "ruler: drag to measure a distance (mm)"),
    ("Tools", "e", "ellipse ROI: drag for mean / SD HU"),
    ("Tools", "w, Esc", "back to window/level dragging"),
    ("Tools", "Delete", "remove the view's last measurement"),
    ("Dictation", "{ptt} (hold)", "dictate while held (toggle mode: press to start / stop)"),
    ("Dictation", "Ctrl+D", "start / stop dictation"),
    ("Dictation", "Ctrl+P", "play the last dictation"),
    ("Comparison", "Scroll the prior", "while linked: sets the manual offset between the studies"),
    ("Comparison", "Ctrl+W", "close the comparison"),
    ("Files", "Ctrl+O / Ctrl+Shift+O", "open a DICOM folder / a file"),
    ("Files", "Ctrl+L", "add the study to the library"),
    ("Help", "F1", "this table"),
)


class ShortcutsDialog(QDialog):
    def __init__(self, ptt_key: str = "F4", parent=None):
        super().__init__(parent)
        self.setWindowTitle("SpeechCT shortcuts")
        table = QTableWidget(len(SHORTCUTS), 3)
        table.setHorizontalHeaderLabels(("Where", "Key / mouse", "Does"))
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for row, cells in enumerate(SHORTCUTS):
            for col, text in enumerate(cells):
                table.setItem(row, col, QTableWidgetItem(text.format(ptt=ptt_key)))
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        self.table = table
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(table)
        lay.addWidget(buttons)
        self.resize(620, 640)
