"""Linked scrolling of a prior study beside the current one, without registration: the prior's
crosshair follows the current one's by a fixed offset (LPS mm). The offset starts by aligning the
two studies' centres; scrolling the prior while linked changes the offset (the manual correction a
reader makes when the two scans start at different levels), as in Weasis and OHIF."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

from .state import ViewerState


class ScrollLink(QObject):
    offsetChanged = Signal()

    def __init__(self, current: ViewerState, prior: ViewerState, parent: QObject | None = None):
        super().__init__(parent)
        self.current, self.prior = current, prior
        self.enabled = True
        self.offset = prior.geometry.centre - current.geometry.centre
        self._following = False
        current.cursorChanged.connect(self._follow)
        prior.cursorChanged.connect(self._prior_moved)
        self._follow()

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        if self.enabled:
            self._follow()

    def reset_offset(self) -> None:
        self.offset = self.prior.geometry.centre - self.current.geometry.centre
        self.offsetChanged.emit()
        self._follow()

    def _follow(self) -> None:
        if not self.enabled:
            return
        self._following = True
        try:
            self.prior.set_cursor(self.current.cursor + self.offset)
        finally:
            self._following = False

    def _prior_moved(self) -> None:
        if self._following or not self.enabled:
            return
        self.offset = self.prior.cursor - self.current.cursor
        self.offsetChanged.emit()

    def describe(self) -> str:
        """The offset along the three axes, named the way a reader says it (S/I, P/A, L/R)."""
        parts = []
        for value, (pos, neg) in zip(self.offset, (("L", "R"), ("P", "A"), ("S", "I")), strict=True):
            if abs(value) >= 0.05:
                parts.append(f"{pos if value > 0 else neg} {abs(value):.1f}")
        return "offset " + (" ".join(parts) + " mm" if parts else "0 mm")

    @property
    def slice_offset(self) -> int:
        """The axial offset in the prior's slices."""
        return int(np.round(self.offset[2] / self.prior.geometry.step[2]))
