"""Pass 2 of DICOM reading: pixel values of one series → Hounsfield units.

Uncompressed little-endian frames are read straight from the file into the output buffer
(``readinto`` at the offset pass 1 found; the read releases the GIL, so a thread pool
overlaps I/O); everything else (JPEG, JPEG-LS, JPEG 2000, RLE, big endian, modality LUTs)
goes through pydicom and its installed decoder plugins. The modality LUT (RescaleSlope /
RescaleIntercept, per frame) is then applied.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.errors import StudyError
from engine.io.dicom_scan import RAW_LITTLE_ENDIAN, SliceHeader, default_workers
from engine.io.dicom_series import DicomSeries

_INT16 = np.iinfo(np.int16)


def _stored_dtype(h: SliceHeader) -> np.dtype:
    kind = "i" if h.signed else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def _fast(h: SliceHeader) -> bool:
    return (
        h.pixel_offset is not None
        and h.transfer_syntax in RAW_LITTLE_ENDIAN
        and h.bits_allocated in (8, 16, 32)
        and h.samples_per_pixel == 1
        and not h.has_modality_lut
    )


def _fix_unused_bits(plane: np.ndarray, h: SliceHeader) -> None:
    """Mask (unsigned) or sign-extend (signed) values whose BitsStored < BitsAllocated, in place."""
    unused = h.bits_allocated - h.bits_stored
    if unused <= 0 or plane.dtype.kind not in "iu":
        return
    if h.signed:
        np.left_shift(plane, unused, out=plane)
        np.right_shift(plane, unused, out=plane)  # arithmetic shift restores the sign
    else:
        np.bitwise_and(plane, (1 << h.bits_stored) - 1, out=plane)


class _Decoded:
    """pydicom-decoded frames of compressed or unusual files; multi-frame files are decoded once."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def frame(self, h: SliceHeader) -> np.ndarray:
        if h.n_frames == 1:
            arr = _decode_file(h)  # single-frame: nothing to share, so keep nothing
            return arr if arr.ndim == 2 else arr[0]
        with self._guard:
            lock = self._locks.setdefault(h.path, threading.Lock())
        with lock:
            if h.path not in self._cache:
                self._cache[h.path] = _decode_file(h)
            arr = self._cache[h.path]
        return arr if h.frame is None else arr[h.frame]


def _decode_file(h: SliceHeader) -> np.ndarray:
    """All frames of one file as pydicom decodes them; modality LUT sequences applied here."""
    import pydicom  # only for files not read raw: its import is most of a plain load's cost
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(h.path)
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types; the user needs one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"cannot decode pixel data ({text[:200]})", h.path) from exc
    if arr.ndim not in (2, 3) or (h.n_frames > 1 and arr.ndim != 3) or h.samples_per_pixel != 1:
        raise StudyError(f"pixel data is not a grey-level image (shape {arr.shape})", h.path)
    if h.has_modality_lut:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    return arr


def read_pixels(series: DicomSeries, workers: int | None = None) -> np.ndarray:
    """HU array (z, y, x) of ``series``: int16 when the rescale is exact in int16, else float32."""
    slices = series.slices
    n, rows, cols = series.shape
    if any((h.rows, h.columns) != (rows, cols) for h in slices):
        raise StudyError(f"series {series.uid} mixes matrix sizes", slices[0].path)
    dtypes = {_stored_dtype(h) for h in slices}
    stored_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype("<f8")
    if any(h.has_modality_lut for h in slices):
        stored_dtype = np.dtype("<f8")  # LUT outputs are not stored values
    stored = np.empty((n, rows, cols), dtype=stored_dtype)
    decoded = _Decoded()
    frame_bytes = rows * cols * stored_dtype.itemsize

    def load(k: int) -> None:
        h = slices[k]
        if _fast(h) and _stored_dtype(h) == stored_dtype:
            offset = h.pixel_offset + (h.frame or 0) * frame_bytes
            try:
                with open(h.path, "rb") as fp:
                    fp.seek(offset)
                    got = fp.readinto(memoryview(stored[k]).cast("B"))
            except OSError as exc:
                raise StudyError(f"cannot read pixel data ({exc.strerror or exc})", h.path) from exc
            if got != frame_bytes:
                raise StudyError(f"truncated pixel data ({got} of {frame_bytes} bytes)", h.path)
            _fix_unused_bits(stored[k], h)
        else:
            plane = decoded.frame(h)
            if plane.shape != (rows, cols):
                raise StudyError(f"frame has shape {plane.shape}, header says {(rows, cols)}", h.path)
            stored[k] = plane

    n_workers = default_workers(workers)
    if n_workers > 1 and n > 1:
        with ThreadPoolExecutor(min(n_workers, n)) as pool:
            list(pool.map(load, range(n)))
    else:
        for k in range(n):
            load(k)
    return _rescale(stored, slices)


def _rescale(stored: np.ndarray, slices: list[SliceHeader]) -> np.ndarray:
    """Apply RescaleSlope/Intercept per slice; keep int16 when every HU is an exact int16."""
    if any(h.has_modality_lut for h in slices):
        out = stored.astype(np.float32)  # LUT slices were converted while decoding
        for k, h in enumerate(slices):
            if not h.has_modality_lut:
                out[k] = out[k] * np.float32(h.slope) + np.float32(h.intercept)
        return out
    slopes = np.array([h.slope for h in slices], dtype=np.float64)
    intercepts = np.array([h.intercept for h in slices], dtype=np.float64)
    integral = (
        stored.dtype.kind in "iu"
        and np.all(slopes == np.round(slopes))
        and np.all(intercepts == np.round(intercepts))
    )
    if integral:
        lo, hi = _stored_range(stored)
        candidates = [lo * slopes + intercepts, hi * slopes + intercepts]
        if min(c.min() for c in candidates) >= _INT16.min and max(c.max() for c in candidates) <= _INT16.max:
            if np.all(slopes == 1) and _INT16.min <= lo and hi <= _INT16.max:
                # Values fit int16, so reinterpreting 16-bit storage is exact and saves a copy.
                out = stored.view(np.int16) if stored.dtype.itemsize == 2 else stored.astype(np.int16)
                if np.all(intercepts == intercepts[0]):
                    if intercepts[0] != 0:
                        out += np.int16(intercepts[0])
                else:
                    out += intercepts.astype(np.int16)[:, None, None]
                return out
            out = stored.astype(np.int32)
            out *= slopes.astype(np.int32)[:, None, None]
            out += intercepts.astype(np.int32)[:, None, None]
            return out.astype(np.int16)
    out = stored.astype(np.float32)
    if np.any(slopes != 1):
        out *= slopes.astype(np.float32)[:, None, None]
    if np.any(intercepts != 0):
        out += intercepts.astype(np.float32)[:, None, None]
    return out


def _stored_range(stored: np.ndarray) -> tuple[int, int]:
    # The dtype's own range avoids a pass over the data when it already proves the fit.
    info = np.iinfo(stored.dtype)
    if info.bits <= 8:
        return int(info.min), int(info.max)
    return int(stored.min()), int(stored.max())
