"""engine.preprocess against an independent re-derivation of CT-CLIP's preprocessing.

The reference below is written from CT-CLIP's formulas (scripts/data.py and
scripts/data_inference_nii.py of ibrahimethemhamamci/CT-CLIP): nibabel (i, j, k) array,
transpose to (k, i, j), one float64 trilinear F.interpolate over the whole volume with
int(n * factor) sizes, clip, /1000, float32, then crop/pad in (i, j, k) order and a
final permute. It shares no helper with engine.preprocess.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import StudyError
from engine.preprocess import (
    CPU_SPEC,
    CTCLIP_SPEC,
    PreprocessSpec,
    builtin_spec_names,
    get_spec,
    output_geometry,
    prepare_array,
    prepare_ct,
)
from engine.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ctclip_reference(hu_zyx: np.ndarray, spacing_zyx, spec: PreprocessSpec) -> np.ndarray:
    """CT-CLIP's nii_img_to_tensor, generalised to any spec, from an LPS (z, y, x) array."""
    lo, hi = spec.hu_window
    # engine.io maps nibabel's data[i, j, k] to array[k, j, i]; undo that to get CT-CLIP's input.
    img = np.ascontiguousarray(hu_zyx.transpose(2, 1, 0)).astype(np.float64)  # (i, j, k)
    sz, sy, sx = spacing_zyx
    current = (sz, sx, sy)  # spacing of the (k, i, j) axes
    if spec.clip_before_resample:  # data_inference_nii.py
        img = np.clip(img, lo, hi)
    img = img.transpose(2, 0, 1)  # (k, i, j)
    t = torch.tensor(img)[None, None]
    factors = [current[a] / spec.spacing[a] for a in range(3)]
    size = [int(t.shape[2 + a] * factors[a]) for a in range(3)]
    img = F.interpolate(t, size=size, mode="trilinear", align_corners=False).numpy()[0, 0]
    img = img.transpose(1, 2, 0)  # back to (i, j, k)
    if not spec.clip_before_resample:  # data.py
        img = np.clip(img, lo, hi)
    img = (img / spec.scale_divisor).astype(np.float32)
    t = torch.tensor(img)
    want = (spec.shape[1], spec.shape[2], spec.shape[0])  # (i, j, k) targets, like (480, 480, 240)
    slices = []
    for n, w in zip(t.shape, want):
        start = max((n - w) // 2, 0)
        slices.append(slice(start, min(start + w, n)))
    t = t[tuple(slices)]
    pads = []
    for n, w in zip(t.shape, want):
        before = (w - n) // 2
        pads.append((before, w - n - before))
    # F.pad lists the last axis first.
    flat = [p for pair in reversed(pads) for p in pair]
    t = F.pad(t, flat, value=spec.pad_value)
    return t.permute(2, 0, 1).numpy()


def small_spec(shape, spacing=(1.5, 0.75, 0.75), **kw) -> PreprocessSpec:
    return PreprocessSpec(
        name="test",
        spacing=spacing,
        shape=shape,
        hu_window=kw.pop("hu_window", (-1000, 1000)),
        scale_divisor=kw.pop("scale_divisor", 1000),
        pad_value=kw.pop("pad_value", -1),
        **kw,
    )


def random_hu(shape, seed=0, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Wider than the window so clipping (and its order relative to resampling) matters.
    return rng.integers(-1400, 2200, size=shape).astype(dtype)


def lps_volume(array, spacing) -> Volume:
    return Volume(array=array, spacing=spacing, origin=(-10.0, 20.0, -300.0))


# (input shape z, y, x), input spacing (sz, sy, sx), spec shape, spec spacing.
# Output order is (k, i, j) = (z, x, y): the comments give resampled size -> target per output axis.
CASES = [
    # z 13*2.5/1.5=21 -> 16 (crop, odd 5); rows x 17*0.9/0.75=20 -> 19 (crop 1); cols y 20*0.9/0.75=24 -> 24
    ((13, 20, 17), (2.5, 0.9, 0.9), (16, 19, 24), (1.5, 0.75, 0.75)),
    # z 21 -> 30 (pad 9); rows 20 -> 27 (pad 7); cols 24 -> 22 (crop 2)
    ((13, 20, 17), (2.5, 0.9, 0.9), (30, 27, 22), (1.5, 0.75, 0.75)),
    # downsampling everywhere, anisotropic in-plane; z 31*0.7/1.5=14.47->14 -> 15 (pad 1)
    ((31, 26, 29), (0.7, 0.55, 0.6), (15, 20, 17), (1.5, 0.75, 0.75)),
    # unchanged spacing on every axis (identity resampling), crop even / pad even
    ((10, 12, 14), (1.5, 0.75, 0.75), (8, 18, 10), (1.5, 0.75, 0.75)),
    # cpu-like spacing
    ((26, 40, 36), (2.5, 1.4, 1.4), (16, 24, 18), (5.0, 2.8, 2.8)),
]


@pytest.mark.parametrize("clip_before", [False, True], ids=["clip-after", "clip-before"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matches_ctclip_arithmetic(case, clip_before):
    in_shape, spacing, out_shape, out_spacing = case
    spec = small_spec(out_shape, out_spacing, clip_before_resample=clip_before)
    hu = random_hu(in_shape, seed=len(in_shape) + sum(in_shape))
    got = prepare_ct(lps_volume(hu, spacing), spec)
    ref = ctclip_reference(hu, spacing, spec)
    assert got.shape == spec.shape and got.dtype == np.float32
    assert ref.shape == spec.shape
    # CT-CLIP works in float64, we in float32: torch's float32 bilinear kernel places source
    # points to ~n * 2**-24 voxel, times neighbour steps of up to 3600 HU here -> ~5e-6 after /1000.
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_clip_order_matters_so_the_tests_can_tell():
    in_shape, spacing, out_shape, out_spacing = CASES[0]
    hu = random_hu(in_shape)
    after = prepare_ct(lps_volume(hu, spacing), small_spec(out_shape, out_spacing))
    before = prepare_ct(lps_volume(hu, spacing), small_spec(out_shape, out_spacing, clip_before_resample=True))
    assert np.abs(after - before).max() > 0.05


def test_pad_value_and_window_are_applied():
    hu = np.full((4, 6, 6), 3000, np.int16)
    spec = small_spec((8, 10, 10), (1.0, 1.0, 1.0), hu_window=(-500, 500), scale_divisor=250, pad_value=-7)
    out = prepare_ct(lps_volume(hu, (1.0, 1.0, 1.0)), spec)
    # 4 slices -> pad 2 before, 2 after; 6 -> pad 2 / 2 in-plane.
    assert np.all(out[2:6, 2:8, 2:8] == 2.0)
    assert np.all(out[:2] == -7) and np.all(out[6:] == -7)
    assert np.all(out[:, :2] == -7) and np.all(out[:, :, 8:] == -7)


def test_chunking_does_not_change_the_result():
    in_shape, spacing, out_shape, out_spacing = CASES[1]
    spec = small_spec(out_shape, out_spacing)
    hu = random_hu(in_shape, seed=3).transpose(0, 2, 1)  # already in output order
    sp = (spacing[0], spacing[2], spacing[1])
    whole = prepare_array(hu, sp, spec)
    tiny = prepare_array(hu, sp, spec, chunk_bytes=1)  # one output slice at a time
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-6)  # float32 rounding only


def test_numpy_and_torch_inputs_agree():
    in_shape, spacing, out_shape, out_spacing = CASES[2]
    spec = small_spec(out_shape, out_spacing)
    hu = random_hu(in_shape, seed=5)
    from_np = prepare_array(hu, spacing, spec)
    from_torch = prepare_array(torch.from_numpy(hu), spacing, spec)
    from_float = prepare_array(torch.from_numpy(hu.astype(np.float64)), spacing, spec)
    assert isinstance(from_np, np.ndarray) and from_np.dtype == np.float32
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    assert from_torch.device.type == "cpu"
    np.testing.assert_array_equal(from_torch.numpy(), from_np)
    np.testing.assert_array_equal(from_float.numpy(), from_np)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_stays_on_gpu():
    in_shape, spacing, out_shape, out_spacing = CASES[0]
    spec = small_spec(out_shape, out_spacing)
    hu = random_hu(in_shape, seed=6)
    out = prepare_array(torch.from_numpy(hu).cuda(), spacing, spec)
    assert out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), prepare_array(hu, spacing, spec), rtol=0, atol=1e-5)


def test_non_contiguous_and_readonly_numpy_input():
    hu = random_hu((12, 14, 16), seed=7)
    spec = small_spec((9, 11, 13), (2.0, 1.0, 1.0))
    ro = hu.copy()
    ro.flags.writeable = False
    a = prepare_array(ro[:, ::-1, :], (1.5, 0.8, 0.8), spec)
    b = prepare_array(np.ascontiguousarray(hu[:, ::-1, :]), (1.5, 0.8, 0.8), spec)
    np.testing.assert_array_equal(a, b)


# --- orientation -------------------------------------------------------------------------
def _restack(vol: Volume, perm_xyz, flips_xyz) -> Volume:
    """The same patient voxels stored differently, with the matching geometry (no engine helpers).

    perm_xyz[t] = source axis (0=x, 1=y, 2=z) of new axis t; flips_xyz[t] reverses new axis t.
    """
    src = vol.array  # (z, y, x)
    # numpy axis of source axis s is 2 - s; new array axes are (z', y', x') = new axes (2, 1, 0).
    arr = np.transpose(src, [2 - perm_xyz[2], 2 - perm_xyz[1], 2 - perm_xyz[0]])
    for t in range(3):
        if flips_xyz[t]:
            arr = np.flip(arr, axis=2 - t)
    sp_xyz = vol.spacing[::-1]
    new_sp_xyz = [sp_xyz[perm_xyz[t]] for t in range(3)]
    new_dir = np.zeros((3, 3))
    first_index = np.zeros(3)
    for t in range(3):
        s = perm_xyz[t]
        new_dir[:, t] = vol.direction[:, s] * (-1 if flips_xyz[t] else 1)
        if flips_xyz[t]:
            first_index[s] = vol.array.shape[2 - s] - 1
    origin = (vol.affine_lps() @ np.array([*first_index, 1.0]))[:3]
    return Volume(array=np.ascontiguousarray(arr), spacing=tuple(new_sp_xyz[::-1]), origin=tuple(origin), direction=new_dir)


@pytest.mark.parametrize(
    "perm, flips",
    [
        ((0, 1, 2), (True, False, False)),  # RPS
        ((0, 1, 2), (False, True, True)),  # LAI
        ((1, 0, 2), (False, False, False)),  # x/y swapped
        ((2, 0, 1), (True, False, True)),  # sagittal-style stack
        ((0, 2, 1), (False, True, False)),  # coronal-style stack
    ],
)
def test_orientation_does_not_change_output(perm, flips):
    hu = random_hu((11, 14, 17), seed=9)
    vol = lps_volume(hu, (2.0, 0.8, 0.7))
    other = _restack(vol, perm, flips)
    assert other.orientation_code() != "LPS"
    # The geometry really is the same: voxel (0,0,0) of `vol` sits at the same LPS point in both.
    spec = small_spec((15, 16, 13), (1.5, 0.75, 0.75))
    np.testing.assert_array_equal(prepare_ct(other, spec), prepare_ct(vol, spec))


def test_flipped_voxels_with_wrong_geometry_differ():
    hu = random_hu((11, 14, 17), seed=9)
    vol = lps_volume(hu, (2.0, 0.8, 0.7))
    lying = vol.replace(array=np.ascontiguousarray(hu[:, :, ::-1]))  # flipped, direction still LPS
    spec = small_spec((15, 16, 13), (1.5, 0.75, 0.75))
    assert not np.array_equal(prepare_ct(lying, spec), prepare_ct(vol, spec))


def test_output_axes_run_superior_left_posterior():
    # A bright voxel towards patient left/posterior/superior must land at high indices.
    hu = np.full((20, 20, 20), -1000, np.int16)
    hu[15, 3, 17] = 1000  # z high (S), y low (anterior), x high (L)
    spec = small_spec((20, 20, 20), (1.0, 1.0, 1.0))
    out = prepare_ct(lps_volume(hu, (1.0, 1.0, 1.0)), spec)
    k, i, j = np.unravel_index(np.argmax(out), out.shape)
    assert (k, i, j) == (15, 17, 3)  # (slice -> S, row -> L, column -> P)


# --- specs -------------------------------------------------------------------------------
def test_builtin_specs():
    assert builtin_spec_names() == ["cpu-128", "ctclip"]
    assert get_spec("ctclip") == CTCLIP_SPEC
    assert get_spec("cpu-128") == CPU_SPEC
    c = CTCLIP_SPEC
    assert (c.name, c.spacing, c.shape) == ("ctclip", (1.5, 0.75, 0.75), (240, 480, 480))
    assert (c.hu_window, c.scale_divisor, c.pad_value, c.orientation) == ((-1000, 1000), 1000, -1, "LPS")
    assert c.clip_before_resample is False
    p = CPU_SPEC
    assert (p.name, p.spacing, p.shape) == ("cpu-128", (5.0, 2.8, 2.8), (64, 128, 128))
    assert (p.hu_window, p.scale_divisor, p.pad_value, p.orientation) == ((-1000, 1000), 1000, -1, "LPS")


@pytest.mark.parametrize("spec", [CTCLIP_SPEC, CPU_SPEC, small_spec((3, 4, 5), clip_before_resample=True)])
def test_json_round_trip(spec, tmp_path):
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert get_spec(path) == spec


def test_bad_specs_are_refused():
    good = CPU_SPEC.to_dict()
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({**good, "colour": "red"})
    with pytest.raises(ValueError, match="missing"):
        PreprocessSpec.from_dict({k: v for k, v in good.items() if k != "shape"})
    for bad in (
        {"spacing": [1, 0, 1]},
        {"shape": [1, 2]},
        {"hu_window": [5, -5]},
        {"scale_divisor": 0},
        {"orientation": "LLS"},
    ):
        with pytest.raises(ValueError, match="invalid PreprocessSpec"):
            PreprocessSpec.from_dict({**good, **bad})
    with pytest.raises(KeyError):
        get_spec("no-such-spec")


def test_too_small_volume_is_a_study_error():
    vol = Volume(array=np.zeros((1, 8, 8), np.int16), spacing=(2.0, 1.0, 1.0), metadata={"source": "/x/ct.nii.gz"})
    with pytest.raises(StudyError, match="ct.nii.gz"):
        prepare_ct(vol, CPU_SPEC)  # 1 slice * 2/5 -> 0 slices


def test_output_geometry_reports_crop_and_pad():
    g = output_geometry((13, 17, 20), (2.5, 0.9, 0.9), small_spec((16, 27, 22)))
    assert g["resampled_shape"] == (21, 20, 24)
    assert g["crop_start"] == (2, 0, 1)
    assert g["kept_shape"] == (16, 20, 22)
    assert g["pad_before"] == (0, 3, 0)


def test_cpu_spec_on_phantom_sized_volume():
    # The synthetic phantoms: ~256 x 256 x 130 at ~1.4 x 1.4 x 2.5 mm.
    hu = random_hu((130, 256, 256), seed=11)
    out = prepare_ct(lps_volume(hu, (2.5, 1.4, 1.4)), CPU_SPEC)
    assert out.shape == (64, 128, 128) and out.dtype == np.float32
    # 130 * 0.5 = 65 slices -> crop 1; 256 * 0.5 = 128 in-plane -> no crop or pad.
    assert out.min() >= -1 and out.max() <= 1
    assert not np.any(out == -1) or np.mean(out == -1) < 0.3


@pytest.mark.slow
def test_ctclip_spec_full_size_matches_reference():
    hu = random_hu((60, 96, 110), seed=12)
    spacing = (5.0, 3.0, 3.5)  # upsampled to 200 x 448 x 384: pads on every axis
    got = prepare_ct(lps_volume(hu, spacing), CTCLIP_SPEC)
    ref = ctclip_reference(hu, spacing, CTCLIP_SPEC)
    assert got.shape == (240, 480, 480)
    np.testing.assert_allclose(got, ref, rtol=0, atol=3e-5)  # float32 positions at ~450 voxels, see above


def test_spacing_is_snapped_to_its_decimal_before_sizes():
    from engine.preprocess import snap_spacing

    assert snap_spacing(float(np.float32(1.4))) == 1.4  # NIfTI header float32
    assert snap_spacing(1.4000000000000057) == 1.4  # difference of DICOM positions
    assert snap_spacing(0.68359375) == 0.68359375  # exact binary values are kept
    spec = small_spec((64, 128, 128), (5.0, 2.8, 2.8))
    g32 = output_geometry((130, 256, 256), (2.5, float(np.float32(1.4)), float(np.float32(1.4))), spec)
    g64 = output_geometry((130, 256, 256), (2.5, 1.4, 1.4), spec)
    assert g32 == g64 and g64["resampled_shape"] == (65, 128, 128)
