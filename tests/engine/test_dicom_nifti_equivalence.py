"""One volume written as DICOM and as NIfTI, in several storage orientations, read back with
engine.io.load_volume, gives the same prepare_ct output for both built-in specs.

This is the contract behind docs/design.md §3: DICOM input reaches the encoder in the same
anatomical orientation as CT-RATE's NIfTI volumes (docs/orientation.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.io import load_volume, write_dicom_series, write_nifti
from engine.preprocess import CPU_SPEC, CTCLIP_SPEC, prepare_ct
from engine.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def asymmetric_phantom(shape=(26, 40, 36), spacing=(2.5, 1.4, 1.4)) -> Volume:
    """Int16 HU with structure that differs under every flip and axis swap, in LPS."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    hu = -1000 + 900 * np.exp(-(((x - 8) / 6) ** 2 + ((y - 28) / 9) ** 2))  # blob towards R, posterior
    hu += 400 * (z / shape[0]) + 15 * x - 7 * y  # gradients along each axis
    hu[18:22, 5:9, 25:31] = 1500  # a "bone" box towards L, anterior, superior
    noise = np.random.default_rng(1).integers(-40, 40, size=shape)
    return Volume(
        array=np.clip(np.rint(hu) + noise, -1024, 3000).astype(np.int16),
        spacing=spacing,
        origin=(-120.5, -95.25, -310.0),
    )


# Storage orientations: LPS (typical DICOM), RAS (typical nibabel/dcm2niix-style NIfTI),
# LPI (descending slices) and two non-axial stacks.
STORAGE = ["LPS", "RAS", "LPI", "PIR", "SRA"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each storage orientation written once as a DICOM series and once as NIfTI, read back."""
    base = asymmetric_phantom()
    root = tmp_path_factory.mktemp("equivalence")
    volumes = {}
    for code in STORAGE:
        stored = base.reoriented(code)
        assert stored.orientation_code() == code
        write_dicom_series(stored, root / f"dicom-{code}", seed=3)
        write_nifti(stored, root / f"ct-{code}.nii.gz")
        volumes[("dicom", code)] = load_volume(root / f"dicom-{code}")
        volumes[("nifti", code)] = load_volume(root / f"ct-{code}.nii.gz")
    return base, volumes


def test_reader_geometry_is_what_was_written(written):
    base, volumes = written
    for (fmt, code), vol in volumes.items():
        # A DICOM series has no stored slice order (the reader sorts slices along the normal);
        # the in-plane axes and NIfTI's whole layout are kept as written.
        got = vol.orientation_code()
        assert (got[:2] if fmt == "dicom" else got) == (code[:2] if fmt == "dicom" else code), (fmt, code)
        back = vol.reoriented("LPS")
        np.testing.assert_array_equal(back.array, base.array, err_msg=f"{fmt} {code}")
        np.testing.assert_allclose(back.spacing, base.spacing, atol=1e-5)
        np.testing.assert_allclose(back.origin, base.origin, atol=1e-3)


def test_cpu_spec_identical_for_every_format_and_orientation(written):
    base, volumes = written
    expected = prepare_ct(base, CPU_SPEC)
    assert expected.shape == (64, 128, 128)
    # 26 * 2.5 / 5 = 13 slices, 40/36 * 1.4 / 2.8 = 20/18: all padded, so this checks placement too.
    for key, vol in volumes.items():
        np.testing.assert_array_equal(prepare_ct(vol, CPU_SPEC), expected, err_msg=str(key))


def test_standard_dicom_needs_no_reorientation(written):
    # An ordinary axial DICOM series (x -> L, y -> P, slices towards the head) already is
    # CT-RATE's orientation, like a CT-RATE NIfTI read by engine.io.
    _, volumes = written
    assert volumes[("dicom", "LPS")].orientation_code() == CTCLIP_SPEC.orientation


@pytest.mark.slow
def test_ctclip_spec_identical_for_every_format_and_orientation(written):
    base, volumes = written
    expected = prepare_ct(base, CTCLIP_SPEC)
    assert expected.shape == (240, 480, 480)
    for key, vol in volumes.items():
        assert np.array_equal(prepare_ct(vol, CTCLIP_SPEC), expected), key


def test_ctclip_spec_dicom_vs_nifti_one_orientation(written):
    # Fast stand-in for the slow test above: the CT-CLIP spec on one DICOM/NIfTI pair.
    _, volumes = written
    a = prepare_ct(volumes[("dicom", "LPS")], CTCLIP_SPEC)
    b = prepare_ct(volumes[("nifti", "RAS")], CTCLIP_SPEC)
    assert a.shape == (240, 480, 480)
    assert np.array_equal(a, b)  # 55 M voxels: np.testing's report machinery would take seconds
