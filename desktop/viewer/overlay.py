"""Text drawn over a slice view: orientation letters at the edges, slice number and W/L in corners."""

from __future__ import annotations

from vtkmodules.vtkRenderingAnnotation import vtkCornerAnnotation
from vtkmodules.vtkRenderingCore import vtkTextActor

# Radiological convention: patient's right on the screen's left; anterior up (axial), superior up.
# (left, right, top, bottom) letters per view.
ORIENTATION_LETTERS = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}
# x, y, horizontal and vertical justification (VTK: 0 left/bottom, 1 centre, 2 right/top)
_EDGES = ((0.01, 0.5, 0, 1), (0.99, 0.5, 2, 1), (0.5, 0.99, 1, 2), (0.5, 0.01, 1, 0))


class SliceOverlay:
    def __init__(self, renderer, view: str):
        self.view = view
        self.letters = []
        for letter, (x, y, just, vjust) in zip(ORIENTATION_LETTERS[view], _EDGES, strict=True):
            actor = vtkTextActor()
            actor.SetInput(letter)
            actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            actor.SetPosition(x, y)
            prop = actor.GetTextProperty()
            prop.SetFontSize(16)
            prop.SetBold(True)
            prop.SetColor(1.0, 0.85, 0.3)
            prop.SetJustification(just)
            prop.SetVerticalJustification(vjust)
            renderer.AddViewProp(actor)
            self.letters.append(actor)
        self.corners = vtkCornerAnnotation()
        self.corners.SetMaximumFontSize(14)
        self.corners.GetTextProperty().SetColor(0.9, 0.9, 0.9)
        renderer.AddViewProp(self.corners)

    def update(self, *, index: int, count: int, window: float, level: float, zoom: float,
               preset: str | None) -> None:
        self.corners.SetText(2, f"{self.view.capitalize()}  {index + 1}/{count}")  # upper left
        wl = f"W {window:.0f}  L {level:.0f}" + (f"  ({preset})" if preset else "")
        self.corners.SetText(0, wl)  # lower left
        self.corners.SetText(1, f"zoom {zoom:.2f}×")  # lower right
