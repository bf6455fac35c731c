"""3D view: CPU ray-cast volume rendering (bone and soft-tissue surfaces) of a subsampled copy.

CPU ray casting (vtkFixedPointVolumeRayCastMapper) because it behaves the same under OSMesa,
Xvfb and real GPUs; the copy is subsampled so its largest side is <= ``MAX_SIDE`` voxels.
Gestures: left-drag rotates, right-drag / wheel zooms, middle-drag pans, `r` resets, double-click
maximises. An orientation cube (R/L, A/P, S/I faces) in the lower-left corner turns with the camera.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction
from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor
from vtkmodules.vtkRenderingCore import vtkColorTransferFunction, vtkRenderer, vtkVolume, vtkVolumeProperty
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper

from engine.volume import Volume

from .base_view import RenderView
from .geometry import Geometry
from .vtk_image import image_data, placement

MAX_SIDE = 128
# HU -> (opacity) and (r, g, b): faint soft tissue, opaque bone; air and lung transparent.
OPACITY = ((-1024, 0.0), (-300, 0.0), (-100, 0.008), (100, 0.015), (200, 0.0), (250, 0.3), (1000, 0.9))
COLOUR = ((-1024, (0.0, 0.0, 0.0)), (-100, (0.75, 0.45, 0.35)), (100, (0.9, 0.6, 0.5)),
          (250, (0.95, 0.9, 0.8)), (1000, (1.0, 1.0, 0.95)))


class VolumeView(RenderView):
    def __init__(self, volume: Volume, geometry: Geometry, parent=None):
        super().__init__(parent)
        self.mapper = vtkFixedPointVolumeRayCastMapper()
        # a ray every 2.5 pixels: on software OpenGL a render fits the event loop's budget, and the
        # picture is hard to tell from one ray per 1.5 pixels (compared side by side)
        self.mapper.SetImageSampleDistance(2.5)
        self.mapper.AutoAdjustSampleDistancesOff()
        prop = vtkVolumeProperty()
        opacity, colour = vtkPiecewiseFunction(), vtkColorTransferFunction()
        for hu, a in OPACITY:
            opacity.AddPoint(hu, a)
        for hu, rgb in COLOUR:
            colour.AddRGBPoint(hu, *rgb)
        prop.SetScalarOpacity(opacity)
        prop.SetColor(colour)
        prop.SetInterpolationTypeToLinear()
        prop.ShadeOn()
        self.actor = vtkVolume()
        self.actor.SetMapper(self.mapper)
        self.actor.SetProperty(prop)
        self.renderer.AddVolume(self.actor)
        self.renderer.SetBackground(0.05, 0.05, 0.08)
        self.marker = self._orientation_marker()
        self._fit_pending = True
        self.set_volume(volume, geometry)

    def set_volume(self, volume: Volume, geometry: Geometry) -> None:
        """Show another study (the GL window is kept)."""
        self.geometry = geometry
        stride = max(1, int(np.ceil(max(volume.shape) / MAX_SIDE)))
        self.mapper.SetInputData(image_data(volume, stride))
        # half a voxel between samples (the default 1 mm oversamples 2.8 mm voxels ~3×)
        self.mapper.SetSampleDistance(min(volume.spacing) * stride / 2.0)
        self.actor.SetUserMatrix(placement(geometry))
        self.reset_camera()

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        if self._fit_pending:  # the camera was reset before the view had its final size
            self.schedule_render()

    def _orientation_marker(self) -> vtkRenderer:
        """A labelled cube in LPS (its +x face is the patient's Left) drawn in a corner viewport on
        top of the volume; ``update_scene`` points its camera the way the main camera looks."""
        cube = vtkAnnotatedCubeActor()
        for face, text in zip(("XPlus", "XMinus", "YPlus", "YMinus", "ZPlus", "ZMinus"), "LRPASI", strict=True):
            getattr(cube, f"Set{face}FaceText")(text)
        cube.SetFaceTextScale(0.55)
        cube.GetCubeProperty().SetColor(0.25, 0.3, 0.38)
        cube.GetTextEdgesProperty().SetColor(0.8, 0.8, 0.8)
        for axis, colour in zip("XYZ", ((1.0, 0.45, 0.45), (0.45, 1.0, 0.45), (0.5, 0.65, 1.0)), strict=True):
            for sign in ("Plus", "Minus"):
                getattr(cube, f"Get{axis}{sign}FaceProperty")().SetColor(*colour)
        ren = vtkRenderer()
        ren.SetViewport(0.0, 0.0, 0.2, 0.2)
        ren.SetLayer(1)
        ren.InteractiveOff()
        ren.AddViewProp(cube)
        rw = self.GetRenderWindow()
        rw.SetNumberOfLayers(2)
        rw.AddRenderer(ren)
        return ren

    def update_scene(self) -> None:
        if self._fit_pending:
            self._fit_camera()
        cam, mcam = self.renderer.GetActiveCamera(), self.marker.GetActiveCamera()
        dop = np.array(cam.GetDirectionOfProjection())
        mcam.SetFocalPoint(0.0, 0.0, 0.0)
        mcam.SetPosition(*(-dop * 4.0))
        mcam.SetViewUp(*cam.GetViewUp())
        self.marker.ResetCameraClippingRange()

    def reset_camera(self) -> None:
        """Anterior view, head up (the patient faces the reader); framed at the next render, when the
        view has its size (a study switch that closes a comparison widens it in the same turn)."""
        self._fit_pending = True
        self.schedule_render()

    def _fit_camera(self) -> None:
        self._fit_pending = False
        g = self.geometry
        cam = self.renderer.GetActiveCamera()
        centre = g.centre
        size = float(np.max(g.bounds_max - g.bounds_min))
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre - np.array([0.0, 1.0, 0.0]) * size * 3.0))
        cam.SetViewUp(0.0, 0.0, 1.0)
        cam.Azimuth(-25.0)  # a little from the patient's right and above: the cube and the chest read as 3D
        cam.Elevation(12.0)
        cam.OrthogonalizeViewUp()
        cam.SetViewAngle(30.0)  # Zoom below narrows the angle: start from VTK's default each time
        self.renderer.ResetCamera()
        cam.Zoom(1.3)  # ResetCamera frames the bounding sphere; the chest fills more of the view

    def on_drag(self, button, dx, dy, modifiers) -> None:
        cam = self.renderer.GetActiveCamera()
        if button == Qt.MouseButton.LeftButton:
            cam.Azimuth(-dx * 0.5)
            cam.Elevation(dy * 0.5)
            cam.OrthogonalizeViewUp()
            self.renderer.ResetCameraClippingRange()
        elif button == Qt.MouseButton.RightButton:
            cam.Dolly(float(np.exp(-dy / 100.0)))
            self.renderer.ResetCameraClippingRange()
        elif button == Qt.MouseButton.MiddleButton:
            fp, pos = np.array(cam.GetFocalPoint()), np.array(cam.GetPosition())
            up = np.array(cam.GetViewUp())
            right = np.cross(fp - pos, up)
            right /= np.linalg.norm(right) or 1.0
            mm = np.linalg.norm(fp - pos) * 0.002
            shift = (-right * dx + up * dy) * mm
            cam.SetFocalPoint(*(fp + shift))
            cam.SetPosition(*(pos + shift))
        self.schedule_render()

    def wheelEvent(self, ev):  # noqa: N802
        self.renderer.GetActiveCamera().Dolly(1.1 ** (ev.angleDelta().y() / 120.0))
        self.renderer.ResetCameraClippingRange()
        self.schedule_render()

    def keyPressEvent(self, ev):  # noqa: N802
        if ev.key() == Qt.Key.Key_R:
            self.reset_camera()
        else:
            ev.ignore()
