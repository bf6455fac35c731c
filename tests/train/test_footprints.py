"""Footprints: where each synthetic finding lies, as dense per-token targets for the CT encoder."""

import copy

import numpy as np
import pytest
import torch

from engine.labels import LABELS
from engine.models.ct import CTEncoder, CTEncoderConfig
from engine.preprocess import get_spec, prepare_ct
from engine.volume import Volume
from train.distributed import DistEnv
from train.footprints import footprint_path, read_footprints, token_targets, write_footprints
from train.recipes import TeacherRecipe, load_run_config
from train.synth.phantom import make_phantom

from .training_fixtures import SMOKE_CONFIG, make_tiny_data

TUBELET = (8, 16, 16)


def test_nodule_targets_are_the_tokens_whose_voxels_it_changed(tmp_path):
    spec = get_spec("cpu-128")
    with_nodule = make_phantom(11, ["Lung nodule"], size="small", with_footprints=True)
    without = make_phantom(11, [], size="small")
    path = tmp_path / "fp.npz"
    write_footprints(path, with_nodule.footprints)
    prints = read_footprints(path)
    assert list(prints) == ["Lung nodule"]
    targets = token_targets(prints, spec, TUBELET)
    assert targets.shape == (18, 8, 8, 8)
    j = LABELS.index("Lung nodule")
    assert targets[np.arange(18) != j].sum() == 0
    positive = targets[j].astype(bool)
    assert 1 <= positive.sum() <= 16  # a few nodules of a few mm: a few of the 512 tokens
    # ground truth for the geometry: where the prepared volumes differ (same patient, noise stream)
    diff = np.abs(prepare_ct(with_nodule.volume, spec) - prepare_ct(without.volume, spec))
    changed = diff.reshape(8, 8, 8, 16, 8, 16).transpose(0, 2, 4, 1, 3, 5)
    changed = changed.reshape(8, 8, 8, -1).max(-1) > 0.1  # > 100 HU somewhere in the token
    assert changed.any()
    assert (changed & positive).sum() >= 0.8 * changed.sum()


def test_anatomy_findings_get_their_region_and_empty_studies_write_nothing(tmp_path):
    big = make_phantom(5, ["Cardiomegaly"], size="small", with_footprints=True)
    targets = token_targets(big.footprints, get_spec("cpu-128"), TUBELET)
    assert targets[LABELS.index("Cardiomegaly")].sum() >= 8  # the whole heart
    normal = make_phantom(5, [], size="small", with_footprints=True)
    write_footprints(tmp_path / "n.npz", normal.footprints)
    assert read_footprints(tmp_path / "n.npz") == {}
    assert footprint_path(tmp_path, "train_3_a_1.nii.gz") == tmp_path / "dataset" / "footprints" / "train_3_a_1.npz"


def test_conv_stem_gives_the_tubelet_grid_and_rejects_bad_widths():
    cfg = CTEncoderConfig.from_dict({**load_run_config(SMOKE_CONFIG)["ct_encoder"], "stem": "conv",
                                     "stem_widths": [4, 8, 8]})
    enc = CTEncoder(cfg)
    latent, tokens = enc.forward_with_tokens(torch.randn(2, 1, 16, 32, 32))
    assert tokens.shape == (2, *cfg.token_grid, cfg.dim) == (2, 4, 4, 4, cfg.dim) and latent.shape == (2, cfg.latent_dim)
    assert CTEncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="conv stem"):
        CTEncoderConfig.from_dict({**cfg.to_dict(), "stem_widths": [4, 8]})
    with pytest.raises(ValueError, match="stem must be"):
        CTEncoderConfig.from_dict({**cfg.to_dict(), "stem": "resnet"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_data(tmp_path_factory.mktemp("dense") / "data", n_train=8, n_valid=4)


def test_dense_loss_trains_a_token_head_and_needs_footprints(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"]["dense_aux_weight"] = 0.5
    from engine.errors import DataError

    with pytest.raises(DataError, match="footprints"):
        TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    root = tiny / "ct-rate"
    for vol in sorted((root / "dataset" / "train").rglob("*.nii.gz")):
        frac = np.zeros((8, 8, 8), np.float32)
        frac[2:4, 3:5, 3:5] = 1.0  # a block of the footprint grid, inside the tiny volumes
        write_footprints(footprint_path(root, vol.name),
                         {"Lung nodule": Volume(frac, spacing=(10.0, 5.6, 5.6), origin=(-20.0, -20.0, -40.0))})
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    assert recipe.train_tokens.shape[:2] == (8, 18) and recipe.train_tokens.sum() > 0
    assert {id(p) for p in recipe.module.token_head.parameters()} <= recipe.head_parameters()
    loss, parts = recipe.loss(list(range(4)), 0, DistEnv())
    assert parts["token_bce"] > 0
    loss.backward()
    assert recipe.module.token_head.weight.grad.abs().sum() > 0
    assert recipe.module.ct.patch_embed.proj.weight.grad.abs().sum() > 0
    # with teacher.prior_bias_init the token head starts at the (positive-weighted) share of finding tokens
    cfg["teacher"]["prior_bias_init"] = True
    primed = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    rate = primed.train_tokens.astype(np.float64).mean(axis=(0, 2, 3, 4))
    from train.recipes import DENSE_POS_WEIGHT

    want = np.clip(DENSE_POS_WEIGHT * rate / (DENSE_POS_WEIGHT * rate + 1 - rate), 1e-4, 1 - 1e-4)
    assert np.allclose(torch.sigmoid(primed.module.token_head.bias).detach().numpy(), want, atol=1e-5)
