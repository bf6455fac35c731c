"""NIfTI-1/2 volumes in and out of :class:`engine.volume.Volume` (LPS conventions).

Axes and coordinates
--------------------
nibabel indexes its array ``(i, j, k)`` and the chosen header affine ``A`` maps
``(i, j, k, 1)`` to RAS millimetres. ``Volume.array`` is ``(z, y, x)`` = ``(k, j, i)``, i.e.
nibabel's array transposed by ``(2, 1, 0)``: Volume's column index x is i, row y is j and
slice z is k. LPS = diag(-1, -1, 1) · RAS, so ``L = diag(-1, -1, 1, 1) @ A`` is
``Volume.affine_lps()``: the norms of L's first three columns are (sx, sy, sz) mm, the
normalised columns are ``direction`` and L's translation is ``origin``. Writing inverts
exactly this, so write → read is the identity on array and geometry (up to float32 in the
header's srow fields).

Which affine (qform or sform)
-----------------------------
The NIfTI-1 standard's order, as nibabel's ``get_best_affine``: the sform when
``sform_code > 0`` (it may hold any affine, incl. shears), else the qform when
``qform_code > 0``, else (orientation unknown: CT-RATE v1 headers are blank) the voxel axes are
taken to be CT-RATE's order, i → patient left, j → posterior, k → superior (LPS, see
docs/orientation.md), with pixdim as spacing and a SpeechCTWarning — so a v1 volume reaches
``prepare_ct`` in the voxel order CT-CLIP was trained on, rather than flipped by an Analyze guess. Files we write carry
the same affine in both, with code 1 (scanner anatomical).

Intensities and CT-RATE
-----------------------
HU = raw · slope + intercept, where slope/intercept are the caller's overrides when given,
else the header's ``scl_slope``/``scl_inter`` when ``scl_slope`` is finite and non-zero,
else (1, 0). CT-RATE v1 headers cannot be trusted, so ``train.data`` passes the metadata
CSV's RescaleSlope/RescaleIntercept (and spacing) as overrides. CT-RATE v2 volumes (any
folder of the path ending in ``_fixed``) already hold HU: overrides other than (1, 0) are
ignored with a SpeechCTWarning (CT-CLIP issue #50), and only the header's own scaling is
applied (nibabel's ``get_fdata`` semantics, which is how v2 is meant to be read).

Returned arrays are int16 when the HU values are integers within int16's range (the usual
case: int16 raw, integer slope and intercept), otherwise float32.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import array_to_file

from engine.errors import DataError, SpeechCTWarning, StudyError
from engine.io.series import SeriesInfo
from engine.io.sniff import one_line, read_head, sniff
from engine.io.validate import check_rescale, check_spacing
from engine.volume import Volume

#: RAS ↔ LPS: negate the first two world axes (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Fill value (HU, air) for NaN/inf voxels of a partly non-finite float volume.
NONFINITE_FILL_HU = -1024

#: A chest CT always has air (outside the body, in the lungs); none below this means a wrong rescale.
NO_AIR_HU = -200.0
#: ... when the field of view is at least this wide (mm) in both in-plane axes.
AIR_CHECK_FOV_MM = 150.0

#: Headers promising more voxel data than this (bytes) are corrupt, not CT (a large CT is ~1 GiB).
MAX_DATA_BYTES = 16 * 2**30

_SUFFIXES = (".nii.gz", ".nii")
#: What nibabel raises on corrupt headers and data (OverflowError: an infinite vox_offset, TypeError,
#: IndexError, KeyError: fields it cannot interpret); each becomes one line naming the file.
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, HeaderDataError, ImageFileError, MemoryError,
                OverflowError, TypeError, IndexError, KeyError)


def is_ctrate_v2(path: str | Path) -> bool:
    """True when a folder of ``path`` ends in ``_fixed`` (CT-RATE v2: data already in HU)."""
    parts = Path(os.path.abspath(path)).parts[:-1]
    return any(part.endswith("_fixed") for part in parts)


def strip_nifti_suffix(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _warn(volume_warnings: list[str], message: str) -> None:
    warnings.warn(message, SpeechCTWarning, stacklevel=3)
    volume_warnings.append(message)


# --------------------------------------------------------------------------- reading


def _open_image(path: Path):
    """(image, open file object or None): the header parsed, the data not read yet.

    The file is sniffed first, so a ``.nii.gz`` that is plain, or a ``.nii`` that is
    gzip-ed, is still read correctly; a DICOM or PNG named ``.nii`` is refused with a
    message saying what it is.
    """
    kind = sniff(path)
    if kind == "dicom":
        raise StudyError("is a DICOM file, not NIfTI (engine.io.load_volume reads both)", path)
    if kind == "nifti-pair":
        if not path.name.lower().endswith(".hdr"):
            raise StudyError("is the header of a NIfTI .hdr/.img pair but is not named .hdr", path)
        try:
            with _nibabel_quiet():
                return nib.load(path), None
        except _READ_ERRORS as exc:
            raise StudyError(f"NIfTI header/image pair cannot be read ({one_line(exc)})", path) from exc
    gzipped = read_head(path, 2) == b"\x1f\x8b"
    try:
        fobj = gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 (closed by the caller)
    except OSError as exc:
        raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", path) from exc
    try:
        # NIfTI-2 headers are 540 bytes (in either byte order); sniff() vouched for one of the two.
        size_field = fobj.read(4)
        fobj.seek(0)
        is_nifti2 = 540 in (int.from_bytes(size_field, "little"), int.from_bytes(size_field, "big"))
        klass = nib.Nifti2Image if is_nifti2 else nib.Nifti1Image
        _check_raw_pixdim(klass.header_class.from_fileobj(fobj, check=False), path)
        fobj.seek(0)
        with _nibabel_quiet():
            return klass.from_stream(fobj), fobj
    except StudyError:
        fobj.close()
        raise
    except _READ_ERRORS as exc:
        fobj.close()
        raise StudyError(f"NIfTI header cannot be read ({one_line(exc)})", path) from exc


@contextlib.contextmanager
def _nibabel_quiet():
    """nibabel logs its header checks and fixes to stderr ("pixdim[1,2,3] should be non-zero; setting 0
    dims to 1", "sizeof_hdr should be 348"): not one line of ours, and not naming the file. Our own
    checks (here and in engine.io.validate) say what matters, as errors or warnings."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_raw_pixdim(header, path: Path) -> None:
    """Header fields as stored, before nibabel's fixes: the data offset must be a byte offset; pixdim
    (when the qform or the no-orientation fallback uses it) must be voxel sizes: a zero would become
    1 mm with only nibabel's own stderr line."""
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or not 0 <= offset < 2.0**40:
        raise StudyError(f"vox_offset {offset:g} is not a byte offset (NIfTI header is corrupt)", path)
    if int(header["sform_code"]) > 0:
        return
    n = min(3, max(0, int(header["dim"][0])))
    check_spacing(np.abs(np.asarray(header["pixdim"][1:1 + n], dtype=np.float64)), path, "pixdim[1,2,3]")


def _check_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise StudyError(f"is {len(shape)}-D (shape {tuple(shape)}); a CT volume needs 3 dimensions", path)
    if len(shape) > 3 and any(d != 1 for d in shape[3:]):
        raise StudyError(
            f"is {len(shape)}-D (shape {tuple(shape)}); only 3-D volumes (or 4-D holding one volume) are supported",
            path,
        )
    if any(d <= 0 for d in shape[:3]):
        raise StudyError(f"holds no voxels (shape {tuple(shape)})", path)
    return tuple(int(d) for d in shape[:3])


def _check_data_size(img, path: Path) -> None:
    n_bytes = int(np.prod(img.header.get_data_shape(), dtype=np.float64)) * img.get_data_dtype().itemsize
    if n_bytes > MAX_DATA_BYTES:
        raise StudyError(
            f"header promises {n_bytes / 2**30:.0f} GiB of voxel data (shape {img.header.get_data_shape()}); "
            "the header is corrupt",
            path,
        )


#: deflate cannot compress better than about 1032:1, so a gzip file of n bytes holds at most this many times n.
MAX_DEFLATE_RATIO = 1032


def _check_plain_size(img, path: Path) -> None:
    """A single file shorter than its header promises: say so in numbers, before reading.

    Uncompressed: the file size. Gzip: the most its compressed size can hold. nibabel allocates the
    whole promised array before it reads a compressed stream, so a 240-byte .nii.gz whose header
    promises 7 GB would otherwise take 7 GB of memory just to find out it is truncated."""
    pair = path.name.lower().endswith(".hdr")  # data live in the .img beside it
    if pair or not hasattr(img.dataobj, "offset"):
        return
    needed = int(img.dataobj.offset) + int(np.prod(img.dataobj.shape)) * img.dataobj.dtype.itemsize
    on_disk = path.stat().st_size
    if read_head(path, 2) == b"\x1f\x8b":
        if needed > MAX_DEFLATE_RATIO * on_disk + 4096:
            raise StudyError(f"image data is truncated (the header needs {needed} bytes; a gzip file of {on_disk} "
                             "bytes cannot hold them)", path)
        return
    if on_disk < needed:
        raise StudyError(f"image data is truncated ({on_disk} bytes on disk, the header needs {needed})", path)


def _header_scaling(img) -> tuple[float, float]:
    """The header's (scl_slope, scl_inter); (1, 0) when scl_slope is 0 or not finite.

    Read from the array proxy: nibabel moves the scaling there and blanks the header copy.
    """
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    if not np.isfinite(slope) or slope == 0.0:
        return 1.0, 0.0
    return slope, (inter if np.isfinite(inter) else 0.0)


def _choose_affine(header, path: Path, volume_warnings: list[str] | None) -> np.ndarray:
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code > 0:
        return header.get_sform()
    # the qform and the no-orientation fallback take voxel sizes from pixdim: nibabel would turn a 0
    # into 1 mm with its own stderr line; the validation gate refuses it, naming the field
    pixdim = check_spacing(np.abs(np.asarray(header["pixdim"][1:4], dtype=np.float64)), path, "pixdim[1,2,3]")
    if qform_code > 0:
        return header.get_qform()
    if volume_warnings is not None:
        _warn(
            volume_warnings,
            f"{path}: NIfTI header has neither sform nor qform (codes 0); orientation unknown, "
            "voxel axes taken as CT-RATE's (i left, j posterior, k superior) with pixdim spacing",
        )
    px, py, pz = pixdim
    return np.diag([-px, -py, pz, 1.0])  # LPS identity, written as the RAS affine the caller expects


def _geometry(affine_ras: np.ndarray, path: Path, volume_warnings: list[str] | None):
    """(spacing (sz, sy, sx), origin LPS, direction) from a RAS voxel→world affine."""
    lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    m = lps[:3, :3]
    norms = np.linalg.norm(m, axis=0)  # (sx, sy, sz)
    if not np.all(np.isfinite(lps)) or np.any(norms <= 1e-9):
        raise StudyError(f"affine is degenerate (voxel sizes {np.round(norms, 6).tolist()} mm)", path)
    direction = m / norms
    if volume_warnings is not None and not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        _warn(volume_warnings, f"{path}: NIfTI affine has shear; direction columns are not orthogonal")
    spacing = (float(norms[2]), float(norms[1]), float(norms[0]))
    return spacing, tuple(float(v) for v in lps[:3, 3]), direction


def _check_spacing_override(spacing, path: Path) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise StudyError(f"spacing override {spacing!r} is not three positive millimetre values (sz, sy, sx)", path)
    return values


def _resolve_scaling(img, path: Path, slope, intercept, volume_warnings: list[str]) -> tuple[float, float]:
    from_header = _header_scaling(img)
    if is_ctrate_v2(path):
        if (slope is not None and float(slope) != 1.0) or (intercept is not None and float(intercept) != 0.0):
            _warn(
                volume_warnings,
                f"{path}: CT-RATE v2 volume (a '_fixed' folder) already holds HU; ignoring rescale "
                f"override slope={slope}, intercept={intercept} (CT-CLIP issue #50)",
            )
        check_rescale(*from_header, path, "scl_slope/scl_inter")
        return from_header
    use_slope = from_header[0] if slope is None else float(slope)
    use_inter = from_header[1] if intercept is None else float(intercept)
    check_rescale(use_slope, use_inter, path,
                  "scl_slope/scl_inter" if slope is None and intercept is None else "rescale slope/intercept")
    return use_slope, use_inter


def _to_hu(raw: np.ndarray, slope: float, inter: float, path: Path, volume_warnings: list[str]) -> np.ndarray:
    """Apply the rescale; int16 when the result is integral and fits, else float32."""
    if raw.dtype.kind not in "biuf":
        raise StudyError(f"voxel type {raw.dtype} is not a scalar number type", path)
    integral = raw.dtype.kind in "biu" and float(slope).is_integer() and float(inter).is_integer()
    if integral:
        hu = raw.astype(np.int64) if (slope, inter) != (1.0, 0.0) else raw
        if (slope, inter) != (1.0, 0.0):
            hu = hu * int(slope) + int(inter)
        lo, hi = (int(hu.min()), int(hu.max())) if hu.size else (0, 0)
        info = np.iinfo(np.int16)
        if info.min <= lo and hi <= info.max:
            return hu.astype(np.int16, copy=False)
        return hu.astype(np.float32)
    hu = raw.astype(np.float32, copy=False)
    if (slope, inter) != (1.0, 0.0):
        hu = hu * np.float32(slope) + np.float32(inter)
    finite = np.isfinite(hu)
    n_bad = int(hu.size - np.count_nonzero(finite))
    if n_bad == hu.size:
        raise StudyError("holds no finite voxel values (all NaN or infinite)", path)
    if n_bad:
        hu = np.where(finite, hu, np.float32(NONFINITE_FILL_HU))
        _warn(
            volume_warnings,
            f"{path}: {n_bad} of {hu.size} voxels are NaN or infinite; set to {NONFINITE_FILL_HU} HU (air)",
        )
    return hu


def _ctrate_meta(path: Path):
    from engine.io.ctrate_metadata import find_volume_meta

    try:
        return find_volume_meta(path)
    except DataError as exc:  # the CSV is the broken file, and the message says which
        raise StudyError(f"{path.name}: {exc}") from exc


def _check_air(hu: np.ndarray, spacing, path: Path, volume_warnings: list[str]) -> None:
    _, sy, sx = spacing
    nx, ny = hu.shape[0], hu.shape[1]  # still nibabel's (i, j, k) = (x, y, z) order
    if min(ny * sy, nx * sx) < AIR_CHECK_FOV_MM:  # a small crop may hold no air
        return
    lowest = float(hu.min()) if hu.size else NO_AIR_HU
    if lowest > NO_AIR_HU:
        _warn(
            volume_warnings,
            f"{path}: no voxel below {NO_AIR_HU:g} HU (minimum {lowest:g}); air should read about "
            "-1000 HU, so the stored values look unrescaled (a CT-RATE v1 volume needs its metadata CSV's "
            "RescaleIntercept, usually -1024: keep it in dataset/metadata/ beside the volumes)",
        )


def read_nifti(
    path: str | Path,
    *,
    slope: float | None = None,
    intercept: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    ctrate_metadata: bool = True,
) -> Volume:
    """Read a NIfTI-1/2 file (plain or gzip, suffix not trusted) as a HU Volume in LPS.

    ``slope``/``intercept`` override the header's rescale (CT-RATE v1 metadata CSV);
    ignored with a warning for CT-RATE v2 (``_fixed``) files. ``spacing`` is
    ``(sz, sy, sx)`` mm and replaces the affine's voxel sizes, keeping its direction and
    origin. Given none of the three, a file inside a CT-RATE v1 download takes them from its
    metadata CSV (:mod:`engine.io.ctrate_metadata`; ``metadata["rescale_source"]`` names the
    CSV) unless ``ctrate_metadata`` is False. A volume with no voxel below
    :data:`NO_AIR_HU` gets a warning: its stored values were probably never rescaled.
    Every failure is a StudyError with one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise StudyError("does not exist", path)
    volume_warnings: list[str] = []
    rescale_source = None
    if ctrate_metadata and slope is None and intercept is None and spacing is None and not is_ctrate_v2(path):
        found = _ctrate_meta(path)
        if found is not None:
            meta, rescale_source = found
            slope, intercept, spacing = meta.slope, meta.intercept, meta.spacing
    img, fobj = _open_image(path)
    try:
        header = img.header
        _check_shape(tuple(header.get_data_shape()), path)
        _check_data_size(img, path)
        use_slope, use_inter = _resolve_scaling(img, path, slope, intercept, volume_warnings)
        _check_plain_size(img, path)
        try:
            raw = np.asanyarray(img.dataobj.get_unscaled())
        except _READ_ERRORS as exc:
            raise StudyError(f"image data is truncated or corrupt ({one_line(exc)})", path) from exc
    finally:
        if fobj is not None:
            fobj.close()
    raw = raw.reshape(raw.shape[:3])  # drops trailing singleton dimensions (4-D with one volume)
    hu = _to_hu(raw, use_slope, use_inter, path, volume_warnings)
    vox_spacing, origin, direction = _geometry(_choose_affine(header, path, volume_warnings), path, volume_warnings)
    if spacing is not None:
        vox_spacing = _check_spacing_override(spacing, path)
    _check_air(hu, vox_spacing, path, volume_warnings)
    return Volume(
        array=np.ascontiguousarray(hu.transpose(2, 1, 0)),
        spacing=vox_spacing,
        origin=origin,
        direction=direction,
        metadata={
            "modality": "CT",  # NIfTI does not say; SpeechCT only reads CT
            "series_uid": str(path),
            "series_description": strip_nifti_suffix(path.name),
            "source": str(path),
            "format": "nifti",
            **({"rescale_source": str(rescale_source)} if rescale_source is not None else {}),
        },
        warnings=volume_warnings,
    )


def nifti_series_info(path: str | Path) -> SeriesInfo:
    """What the header says about ``path`` (no voxel data read); uid is the path."""
    path = Path(path)
    img, fobj = _open_image(path)
    try:
        header = img.header
        shape_ijk = _check_shape(tuple(header.get_data_shape()), path)
        info_warnings: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpeechCTWarning)  # kept in info_warnings instead
            spacing, origin, direction = _geometry(_choose_affine(header, path, info_warnings), path, info_warnings)
            if is_ctrate_v2(path):
                info_warnings.append(f"{path}: CT-RATE v2 ('_fixed'): data already in HU, no rescale overrides")
    finally:
        if fobj is not None:
            fobj.close()
    orientation = Volume(np.zeros((1, 1, 1), np.int8), spacing, origin, direction).orientation_code()
    return SeriesInfo(
        uid=str(path),
        description=strip_nifti_suffix(path.name),
        modality="CT",
        n_slices=shape_ijk[2],
        shape=(shape_ijk[2], shape_ijk[1], shape_ijk[0]),
        spacing=spacing,
        orientation=orientation,
        files=[str(path)],
        warnings=info_warnings,
    )


# --------------------------------------------------------------------------- writing


def _raw_for_dtype(volume: Volume, dtype: np.dtype, slope: float, intercept: float, path: Path) -> np.ndarray:
    """raw = round((HU − intercept) / slope) in ``dtype`` (no rounding for float dtypes), (z, y, x)."""
    hu = volume.array
    if dtype.kind == "f":
        return ((hu.astype(np.float64) - intercept) / slope).astype(dtype)
    if dtype.kind not in "iu":
        raise StudyError(f"cannot write voxel type {dtype}", path)
    if hu.dtype.kind in "iu" and (slope, intercept) == (1.0, 0.0):
        raw = hu
    else:
        raw = np.rint((hu.astype(np.float64) - intercept) / slope)
    if raw.size:
        info = np.iinfo(dtype)
        lo, hi = float(np.min(raw)), float(np.max(raw))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < info.min or hi > info.max:
            raise StudyError(
                f"raw values [{lo}, {hi}] (slope {slope}, intercept {intercept}) do not fit {dtype}", path
            )
    return raw.astype(dtype, copy=False)


def _nifti_header(volume: Volume, raw_zyx: np.ndarray, dtype: np.dtype, slope: float, intercept: float,
                  header_rescale: bool) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(raw_zyx.shape[::-1])  # (i, j, k)
    header.set_data_dtype(dtype)
    affine_ras = RAS_TO_LPS @ volume.affine_lps()
    header.set_qform(affine_ras, code=1)  # also sets pixdim
    header.set_sform(affine_ras, code=1)
    header.set_xyzt_units("mm", "sec")
    if header_rescale:
        header["scl_slope"], header["scl_inter"] = slope, intercept
    else:
        # NIfTI-1: scl_slope == 0 means "no scaling" (like CT-RATE v1, whose slope lives in a CSV).
        header["scl_slope"], header["scl_inter"] = 0.0, 0.0
    return header


def write_nifti(
    volume: Volume,
    path: str | Path,
    *,
    dtype: str = "int16",
    slope: float = 1.0,
    intercept: float = 0.0,
    header_rescale: bool = False,
    compresslevel: int = 1,
) -> Path:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) atomically; returns the path.

    Stored raw = round((HU − intercept) / slope) as ``dtype``. With ``header_rescale`` the
    header's scl_slope/scl_inter say how to get HU back; without it (the default, like
    CT-RATE v1) the header carries no rescale and the caller keeps slope/intercept. The
    affine is the exact LPS→RAS conversion of the Volume's geometry, as sform and qform
    (code 1). Data go to a temporary file in the same folder that is renamed at the end,
    so a failed write leaves nothing behind. Parent folders are created.
    """
    path = Path(path)
    if not path.name.lower().endswith(_SUFFIXES):
        raise StudyError("NIfTI output must end in .nii or .nii.gz", path)
    slope, intercept = float(slope), float(intercept)
    if not np.isfinite(slope) or slope == 0.0 or not np.isfinite(intercept):
        raise StudyError(f"cannot write with slope {slope} and intercept {intercept}", path)
    dtype_np = np.dtype(dtype)
    raw = _raw_for_dtype(volume, dtype_np, slope, intercept, path)
    header = _nifti_header(volume, raw, dtype_np, slope, intercept, header_rescale)
    gz = path.name.lower().endswith(".gz")
    from engine.atomic import atomic_write, keep_umask_permissions

    try:
        with atomic_write(path, fsync=True) as out:
            if gz:
                # mtime=0: the same volume always gives the same bytes.
                with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=compresslevel, mtime=0) as zf:
                    _write_payload(zf, header, raw)
            else:
                _write_payload(out, header, raw)
            keep_umask_permissions(out.name)
    except OSError as exc:
        raise StudyError(f"cannot be written ({one_line(exc.strerror or exc)})", path) from exc
    return path


def _write_payload(fileobj, header: nib.Nifti1Header, raw_zyx: np.ndarray) -> None:
    header.write_to(fileobj)  # 348 bytes + the 4-byte "no extensions" flag
    # NIfTI stores i fastest: Fortran order of (i, j, k) is C order of (z, y, x).
    array_to_file(raw_zyx.T, fileobj, raw_zyx.dtype, offset=int(header["vox_offset"]), order="F")
