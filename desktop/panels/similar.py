"""Similar prior studies from the library; clicking one asks to open it beside the current study."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget


class SimilarPanel(QWidget):
    openRequested = Signal(dict)  # the hit's "study" record (engine.library StudyRecord.to_json())

    def __init__(self, parent=None):
        super().__init__(parent)
        self.header = QLabel("Similar studies appear after a dictation or a spoken query")
        self.header.setWordWrap(True)
        self.list = QListWidget()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.header)
        layout.addWidget(self.list)
        self.list.itemActivated.connect(self._activated)
        self.list.itemClicked.connect(self._activated)
        self.hits: list[dict] = []

    def clear(self) -> None:
        self.hits = []
        self.list.clear()
        self.header.setText("Similar studies appear after a dictation or a spoken query")

    def show_hits(self, hits: list[dict], title: str) -> None:
        self.hits = list(hits)
        self.list.clear()
        for hit in self.hits:
            study = hit.get("study") or {}
            desc = study.get("description") or hit["uid"][:16]
            date = study.get("date") or ""
            cos = ", ".join(f"{k} {v:.3f}" for k, v in (hit.get("cosines") or {}).items())
            item = QListWidgetItem(f"{desc}   {date}\n    score {hit['score']:+.3f}   ({cos or 'no cosines'})")
            item.setData(Qt.ItemDataRole.UserRole, study)
            item.setToolTip(f"{study.get('path')}\n{cos}")
            self.list.addItem(item)
        self.header.setText(f"{title}: {len(self.hits)} similar studies (click to open beside)" if self.hits
                            else f"{title}: no similar studies in the library")

    def _activated(self, item: QListWidgetItem) -> None:
        self.openRequested.emit(item.data(Qt.ItemDataRole.UserRole))
