"""Volume -> vtkImageData (voxel space, spacing kept) + the prop matrix placing it in LPS."""

from __future__ import annotations

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from engine.volume import Volume

from .geometry import Geometry


def image_data(volume: Volume, stride: int = 1) -> vtkImageData:
    """VTK's x, y, z = the array's columns, rows, slices; ``stride`` subsamples (for 3D rendering)."""
    arr = np.ascontiguousarray(volume.array[::stride, ::stride, ::stride].astype(np.int16, copy=False))
    nz, ny, nx = arr.shape
    sz, sy, sx = volume.spacing
    img = vtkImageData()
    img.SetDimensions(nx, ny, nz)
    img.SetSpacing(sx * stride, sy * stride, sz * stride)
    img.SetOrigin(0.0, 0.0, 0.0)
    scalars = numpy_to_vtk(arr.ravel(), deep=True)
    scalars.SetName("HU")
    img.GetPointData().SetScalars(scalars)
    return img


def placement(geometry: Geometry) -> vtkMatrix4x4:
    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(geometry.rotation_origin[r, c]))
    return m


def render_window_rgb(render_window) -> np.ndarray:
    """The render window's pixels as a (rows, cols, 3) uint8 array, top row first."""
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    grab = vtkWindowToImageFilter()
    grab.SetInput(render_window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
    return np.ascontiguousarray(rgb[::-1])
