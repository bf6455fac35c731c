"""Draw the SpeechCT application icon: a stylised axial chest CT slice (body, two lungs, heart,
spine) on a dark rounded tile, with a speech-waveform badge. Writes assets/icons/speechct.png
(256 px), speechct-64.png, speechct-32.png and speechct.svg.

``python scripts/make_icons.py [--out DIR]`` (runs offscreen; needs only PySide6)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPointF, QRectF, QSize, Qt  # noqa: E402
from PySide6.QtGui import (  # noqa: E402
    QBrush,
    QColor,
    QGuiApplication,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QRadialGradient,
)

OUT = Path(__file__).resolve().parents[1] / "assets" / "icons"
CANVAS = 256.0  # drawing units: everything below is laid out on a 256 x 256 grid
ACCENT = QColor("#2ec4b6")  # teal: the voice


def _lung(image_left: bool) -> QPainterPath:
    """One lung: round laterally and posteriorly, hollowed medially where the heart sits.
    Drawn for the image-left lung (the patient's right) and mirrored about x = 128."""
    pts = [(108, 72), (80, 66, 50, 90, 48, 122), (46, 156, 66, 178, 92, 178), (106, 178, 112, 168, 108, 156),
           (96, 140, 94, 112, 106, 96), (114, 86, 116, 76, 108, 72)]
    fx = (lambda x: x) if image_left else (lambda x: CANVAS - x)
    path = QPainterPath()
    path.moveTo(fx(pts[0][0]), pts[0][1])
    for x1, y1, x2, y2, x3, y3 in pts[1:]:
        path.cubicTo(fx(x1), y1, fx(x2), y2, fx(x3), y3)
    return path


def draw(p: QPainter, size: float) -> None:
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.scale(size / CANVAS, size / CANVAS)
    # tile
    tile = QLinearGradient(0, 0, 0, CANVAS)
    tile.setColorAt(0, QColor("#1d2b3a"))
    tile.setColorAt(1, QColor("#0b121a"))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QBrush(tile))
    p.drawRoundedRect(QRectF(8, 8, 240, 240), 44, 44)
    p.save()
    p.translate(-6, -10)  # the slice sits up and left, leaving the corner to the badge
    # body: a wide ellipse with a bright skin/fat rim over grey soft tissue
    body = QRectF(30, 52, 196, 150)
    p.setBrush(QColor("#d5dade"))
    p.drawEllipse(body)
    soft = QRadialGradient(QPointF(128, 126), 100)
    soft.setColorAt(0, QColor("#9aa2aa"))
    soft.setColorAt(1, QColor("#7a838c"))
    p.setBrush(QBrush(soft))
    p.drawEllipse(body.adjusted(8, 8, -8, -8))
    # lungs: black air either side of the mediastinum
    p.setBrush(QColor("#0e141a"))
    p.drawPath(_lung(image_left=True))
    p.drawPath(_lung(image_left=False))
    # heart, toward the patient's left (image right), with the aortic root above it
    p.setBrush(QColor("#b9c0c7"))
    p.drawEllipse(QRectF(112, 102, 50, 44))
    p.drawEllipse(QRectF(114, 84, 20, 20))
    # spine: bright vertebral body and spinous process, the darker canal between them
    p.setBrush(QColor("#f4f6f8"))
    p.drawEllipse(QRectF(114, 158, 28, 24))
    p.drawRoundedRect(QRectF(124, 180, 8, 16), 3, 3)
    p.setBrush(QColor("#5b646d"))
    p.drawEllipse(QRectF(123, 181, 10, 8))
    p.restore()
    # voice badge: a teal disc with waveform bars over the lower right of the tile
    cx, cy, r = 192.0, 192.0, 40.0
    p.setBrush(QColor("#0b121a"))
    p.drawEllipse(QPointF(cx, cy), r + 6, r + 6)  # a dark ring separates it from the slice
    p.setBrush(ACCENT)
    p.drawEllipse(QPointF(cx, cy), r, r)
    p.setPen(QPen(QColor("#ffffff"), 7.0, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    for dx, half in ((-20, 5), (-10, 14), (0, 22), (10, 12), (20, 5)):
        p.drawLine(QPointF(cx + dx, cy - half), QPointF(cx + dx, cy + half))


def render_png(size: int, path: Path) -> None:
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    draw(p, float(size))
    p.end()
    if not img.save(str(path)):
        raise OSError(f"{path}: could not write PNG")


def render_svg(path: Path) -> bool:
    """Write an SVG through QtSvg's generator; returns False when QtSvg is not installed."""
    try:
        from PySide6.QtSvg import QSvgGenerator
    except ImportError:
        return False
    gen = QSvgGenerator()
    gen.setFileName(str(path))
    gen.setSize(QSize(256, 256))
    gen.setViewBox(QRectF(0, 0, 256, 256))
    gen.setTitle("SpeechCT")
    gen.setDescription("SpeechCT application icon: axial chest CT slice with a voice badge")
    p = QPainter(gen)
    draw(p, 256.0)
    p.end()
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: assets/icons)")
    args = ap.parse_args(argv)
    _app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841  (painting needs one)
    args.out.mkdir(parents=True, exist_ok=True)
    render_png(256, args.out / "speechct.png")
    render_png(64, args.out / "speechct-64.png")
    render_png(32, args.out / "speechct-32.png")
    wrote_svg = render_svg(args.out / "speechct.svg")
    print(f"wrote {args.out}/speechct.png, -64, -32" + (", .svg" if wrote_svg else " (no QtSvg: no .svg)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
