"""Text and marks drawn over a slice view: orientation letters at the edges; in the corners the view,
slice number, position (mm) and thickness (upper left), the study (upper right: description, date,
series, modality, never a patient identifier), W/L (lower left), zoom and the HU under the mouse
(lower right); and the measurements on the slice. All text has a drop shadow on a translucent dark
box, so it stays legible over bone and contrast."""

from __future__ import annotations

import numpy as np
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData, vtkPolyLine
from vtkmodules.vtkRenderingAnnotation import vtkCornerAnnotation
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkTextActor

# Radiological convention: patient's right on the screen's left; anterior up (axial), superior up.
# (left, right, top, bottom) letters per view.
ORIENTATION_LETTERS = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}
# x, y, horizontal and vertical justification (VTK: 0 left/bottom, 1 centre, 2 right/top)
_EDGES = ((0.01, 0.5, 0, 1), (0.99, 0.5, 2, 1), (0.5, 0.99, 1, 2), (0.5, 0.01, 1, 0))
# The letter naming the positive and negative direction of each view's slice axis (LPS)
POSITION_LETTERS = {"axial": ("S", "I"), "coronal": ("P", "A"), "sagittal": ("L", "R")}
MEASURE_COLOUR = (1.0, 0.9, 0.2)


def legible(prop, size: int | None = None) -> None:
    """Drop shadow + translucent dark box behind the text (a bright background cannot swallow it)."""
    if size is not None:
        prop.SetFontSize(size)
    prop.ShadowOn()
    prop.SetShadowOffset(1, -1)
    prop.SetBackgroundColor(0.0, 0.0, 0.0)
    prop.SetBackgroundOpacity(0.55)


def study_text(metadata: dict) -> str:
    """The upper-right corner: what a reader needs to know which study this is, without the patient."""
    desc = metadata.get("series_description") or metadata.get("study_description") or "(no description)"
    date = metadata.get("study_date") or ""
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    series = metadata.get("series_number")
    line2 = "  ".join(x for x in (date, f"series {series}" if series not in (None, "") else "",
                                  metadata.get("modality") or "") if x)
    return f"{desc}\n{line2}" if line2 else desc


def position_text(view: str, mm: float) -> str:
    pos, neg = POSITION_LETTERS[view]
    return f"{pos if mm >= 0 else neg} {abs(mm):.1f} mm"


class SliceOverlay:
    def __init__(self, renderer, view: str, study: str = ""):
        self.view = view
        self.renderer = renderer
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
            prop.ShadowOn()
            renderer.AddViewProp(actor)
            self.letters.append(actor)
        self.corners = vtkCornerAnnotation()
        self.corners.SetMinimumFontSize(12)  # legible at a reading distance in a quarter of the screen
        self.corners.SetMaximumFontSize(15)
        self.corners.GetTextProperty().SetColor(0.95, 0.95, 0.95)
        legible(self.corners.GetTextProperty())
        self.set_study(study)
        renderer.AddViewProp(self.corners)
        self._marks: list = []  # measurement actors, rebuilt on each update

    def set_study(self, text: str) -> None:
        self.corners.SetText(3, text)  # upper right

    def update(self, *, index: int, count: int, window: float, level: float, zoom: float,
               preset: str | None, position_mm: float | None = None, thickness_mm: float | None = None,
               hover: tuple | None = None) -> None:
        head = f"{self.view.capitalize()}  {index + 1}/{count}"
        if position_mm is not None:
            head += f"\n{position_text(self.view, position_mm)}"
            if thickness_mm:
                head += f"   thk {thickness_mm:.1f} mm"
        self.corners.SetText(2, head)  # upper left
        wl = f"W {window:.0f}  L {level:.0f}" + (f"  ({preset})" if preset else "")
        self.corners.SetText(0, wl)  # lower left
        lower_right = f"zoom {zoom:.2f}×"
        if hover is not None:
            point, hu = hover
            lower_right = (f"{'outside' if hu is None else f'{hu:.0f} HU'}  "
                           f"({point[0]:.0f}, {point[1]:.0f}, {point[2]:.0f}) mm\n") + lower_right
        self.corners.SetText(1, lower_right)  # lower right

    def corner_text(self, corner: int) -> str:
        return self.corners.GetText(corner) or ""

    def set_measurements(self, measurements, lift: np.ndarray) -> None:
        """Draw ``measurements`` (on this slice) moved by ``lift`` towards the camera."""
        for actor in self._marks:
            self.renderer.RemoveViewProp(actor)
        self._marks = []
        for m in measurements:
            pts = m.outline() + lift
            points, lines, poly = vtkPoints(), vtkCellArray(), vtkPolyData()
            line = vtkPolyLine()
            line.GetPointIds().SetNumberOfIds(len(pts))
            for n, p in enumerate(pts):
                points.InsertNextPoint(*p)
                line.GetPointIds().SetId(n, n)
            lines.InsertNextCell(line)
            poly.SetPoints(points)
            poly.SetLines(lines)
            mapper = vtkPolyDataMapper()
            mapper.SetInputData(poly)
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(*MEASURE_COLOUR)
            actor.GetProperty().SetLineWidth(2)
            actor.PickableOff()
            text = vtkTextActor()
            text.SetInput(m.label())
            coord = text.GetPositionCoordinate()
            coord.SetCoordinateSystemToWorld()
            anchor = m.p2 if m.kind == "ruler" else m.ellipse_axes()[0] + m.up * m.ellipse_axes()[2]
            coord.SetValue(*(anchor + lift))
            tp = text.GetTextProperty()
            tp.SetColor(*MEASURE_COLOUR)
            legible(tp, 14)
            for a in (actor, text):
                self.renderer.AddViewProp(a)
                self._marks.append(a)

    @property
    def labels(self) -> list[str]:
        return [a.GetInput() for a in self._marks if isinstance(a, vtkTextActor)]
