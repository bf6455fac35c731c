"""The findings panel: the 18 findings, most probable first, each with a probability bar, its
threshold mark, what the dictation said, and discrepancies highlighted. Rows are compact so all 18
fit without scrolling at 1600 × 1000; findings the image model is weak on say "not checked" in
words (not only in grey); a hedged mention ("uncertain", CheXpert's fourth state) is shown as
hedged, never as omitted or negated."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

DISCREPANCY_COLOUR = QColor(255, 214, 102)  # amber row: image and dictation disagree
UNCHECKED_COLOUR = QColor(128, 128, 128)  # grey text: the image model is too weak here to contradict the dictation
POSITIVE_COLOUR = QColor(214, 69, 65)
NEGATIVE_COLOUR = QColor(90, 140, 200)
# the same hues, muted: a weak finding's bar must not draw the eye the way a reliable one does
WEAK_POSITIVE_COLOUR = QColor(150, 112, 110)
WEAK_NEGATIVE_COLOUR = QColor(112, 126, 145)
DICTATION_TEXT = {"present": "dictated", "absent": "dictated absent", "not mentioned": "not mentioned",
                  "uncertain": "uncertain (hedged)"}
NOT_CHECKED = "not checked"  # the weak findings' Dictation cell, before and after a dictation
ROW_HEIGHT = 22
KIND_TEXT = {"omitted": "omitted in dictation", "negated": "dictated absent", "unsupported": "not seen on CT"}


class ProbabilityBar(QWidget):
    """A horizontal bar of P(present) with a tick at the threshold (both 0..1)."""

    def __init__(self, probability: float, threshold: float, positive: bool, parent=None, weak: bool = False):
        super().__init__(parent)
        self.probability, self.threshold, self.positive, self.weak = probability, threshold, positive, weak
        self.setMinimumWidth(90)
        self.setToolTip(f"P(present) {probability:.2f}, threshold {threshold:.2f}")

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        r = QRectF(self.rect()).adjusted(2, 5, -2, -5)
        p.fillRect(r, QColor(60, 60, 60))
        bar = QRectF(r.left(), r.top(), r.width() * self.probability, r.height())
        if self.weak:
            p.fillRect(bar, WEAK_POSITIVE_COLOUR if self.positive else WEAK_NEGATIVE_COLOUR)
        else:
            p.fillRect(bar, POSITIVE_COLOUR if self.positive else NEGATIVE_COLOUR)
        x = r.left() + r.width() * self.threshold
        p.setPen(QPen(QColor(255, 255, 255), 2))
        p.drawLine(int(x), int(r.top()) - 3, int(x), int(r.bottom()) + 3)
        p.setPen(QColor(255, 255, 255))
        p.drawText(r.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                   f"{self.probability:.2f}")
        p.end()


class FindingsPanel(QWidget):
    COLUMNS = ("Finding", "P(present) | threshold", "Dictation")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.header = QLabel("No study analysed yet")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        self.table.setWordWrap(False)
        self.header.setWordWrap(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(0, 215)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.header)
        layout.addWidget(self.table)
        self.findings, self.dictation, self.discrepancies = [], None, None
        self.unchecked: set[str] = set()

    def show_pending(self, text: str) -> None:
        self.header.setText(text)

    def clear(self, text: str) -> None:
        """No results on screen (a new study is on its way): only ``text``."""
        self.findings, self.dictation, self.discrepancies = [], None, None
        self.unchecked = set()
        self.table.setRowCount(0)
        self.header.setText(text)

    def fits_without_scrolling(self) -> bool:
        return self.table.verticalScrollBar().maximum() == 0

    def show_results(self, findings, dictation=None, discrepancies=None, title: str = "",
                     unchecked=None) -> None:
        """``findings``: FindingScores, most probable first; ``dictation``: DictationFindings;
        ``discrepancies``: Discrepancy list (rows highlighted); ``unchecked``: labels the image model
        is weak on (greyed from the start, said so in their tooltip; never checked against a dictation)."""
        self.findings, self.dictation, self.discrepancies = list(findings), dictation, discrepancies
        self.unchecked = set(unchecked or ())
        said = {d.label: d for d in dictation or []}
        wrong = {d.label: d for d in discrepancies or []}
        self.table.setRowCount(len(self.findings))
        for row, f in enumerate(self.findings):
            name = QTableWidgetItem(("⚠ " if f.label in wrong else "") + f.label)
            if f.positive:
                font = name.font()
                font.setBold(True)
                name.setFont(font)
            self.table.setItem(row, 0, name)
            bar = self.table.cellWidget(row, 1)
            weak = f.label in self.unchecked
            if isinstance(bar, ProbabilityBar):  # reuse: replacing cell widgets leaves stale ones painted
                bar.probability, bar.threshold, bar.positive, bar.weak = f.probability, f.threshold, f.positive, weak
                bar.update()
            else:
                bar = ProbabilityBar(f.probability, f.threshold, f.positive, weak=weak)
                self.table.setCellWidget(row, 1, bar)
            bar.setToolTip(f"P(present) {f.probability:.2f}, threshold {f.threshold:.2f}"
                           + ("" if f.auroc is None else f"; validation AUROC {f.auroc:.2f}"))
            d = said.get(f.label)
            text = "" if d is None else DICTATION_TEXT.get(d.status, d.status)
            if weak:  # the image model cannot judge it: say so in words, with what was dictated
                text = NOT_CHECKED + (f" · {text}" if text else "")
            if f.label in wrong:
                text = KIND_TEXT.get(wrong[f.label].kind, wrong[f.label].kind)
            item = QTableWidgetItem(text)
            self.table.setItem(row, 2, item)
            for col in (0, 2):
                cell = self.table.item(row, col)
                if weak:
                    cell.setForeground(UNCHECKED_COLOUR)
                    cell.setToolTip(f"weak: the image model's validation AUROC for {f.label} is {f.auroc:.2f}, "
                                    "too low to trust it or to check it against a dictation")
                if f.label in wrong:
                    cell.setBackground(DISCREPANCY_COLOUR)
                    cell.setForeground(QColor(0, 0, 0))
                    cell.setToolTip(f"discrepancy: {wrong[f.label].kind} (margin {wrong[f.label].margin:+.2f})")
        # the Dictation column resizes to its new contents; move the bar widgets with their cells now, or
        # they keep the widths of the previous layout and paint over the Dictation column
        self.table.doItemsLayout()
        positives = sum(f.positive for f in self.findings)
        extra = f", {len(wrong)} discrepancies" if discrepancies is not None else ""
        if self.unchecked:
            extra += f"; {len(self.unchecked)} not checked (weak image model)"
        hedged = sum(d.status == "uncertain" for d in dictation or [])
        if hedged:
            extra += f"; {hedged} dictated as uncertain"
        self.header.setText(f"{title}{positives} of {len(self.findings)} findings above threshold{extra}")

    def highlighted_labels(self) -> list[str]:
        return [d.label for d in self.discrepancies or []]
