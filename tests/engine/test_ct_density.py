"""The CT encoder's density path: pooled summaries computed by hand, standardisation fitted on
data, off by default, purely additive, and it tells apart what a linear embedding confuses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.models.ct import CTEncoder, CTEncoderConfig, load_ct_config
from engine.models.ct_layers import DensityPath

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**changes) -> CTEncoderConfig:
    base = dict(input_size=(8, 16, 16), patch_size=8, temporal_patch_size=4, dim=32, heads=2, dim_head=16,
                pool_heads=2, latent_dim=16, pooling="ctclip", spatial_depth=1, temporal_depth=1)
    base.update(changes)
    return load_ct_config("cpu-small").replace(**base)


def _dense(**changes) -> CTEncoderConfig:
    return _config(density_path=True, density_pool=(4, 8, 8), density_thresholds=(-0.5, 0.5), density_rank=8,
                   **changes)


def test_features_equal_a_hand_computation():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 16, 16) * 2 - 1
    thresholds = (-0.5, 0.0, 0.7)
    path = DensityPath((8, 16, 16), (4, 8, 8), thresholds, rank=3, latent_dim=5)
    got = path.features(x)
    cells = [(z, y, xx) for z in range(2) for y in range(2) for xx in range(2)]
    assert got.shape == (2, len(cells) * (2 + len(thresholds)))
    for b in range(2):
        blocks = [x[b, 0, 4 * z:4 * z + 4, 8 * y:8 * y + 8, 8 * xx:8 * xx + 8] for z, y, xx in cells]
        expected = [blk.mean() for blk in blocks] + [blk.max() for blk in blocks]
        for v in thresholds:
            expected += [torch.log1p((blk > v).sum().float()) / math.log1p(blk.numel()) for blk in blocks]
        assert torch.allclose(got[b], torch.stack(expected), atol=1e-6)


def test_standardisation_is_fitted_on_the_data():
    torch.manual_seed(0)
    path = DensityPath((8, 16, 16), (4, 8, 8), (0.0,), rank=3, latent_dim=5)
    # volumes that differ in level and contrast, so that most features vary well above the floor
    level, contrast = torch.rand(12, 1, 1, 1, 1) - 0.5, torch.rand(12, 1, 1, 1, 1) * 0.8 + 0.2
    data = ((torch.rand(12, 1, 8, 16, 16) * 2 - 1) * contrast + level).clamp(-1, 1)
    data[:, :, :4] = -1.0  # a constant slab, like the air around a body
    assert path.fit_standardization(data[i:i + 5] for i in range(0, 12, 5)) == 12
    z = (path.features(data) - path.mean) / path.std
    varying = path.std > DensityPath.STD_FLOOR
    assert varying.sum() > 0 and (~varying).sum() > 0
    assert torch.allclose(z.mean(0), torch.zeros_like(z[0]), atol=1e-4)
    assert torch.allclose(z[:, varying].std(0, unbiased=False), torch.ones(int(varying.sum())), atol=1e-3)
    assert torch.all(z[:, ~varying] == 0)  # constant features stay zero rather than blowing up
    # training-time jitter on the constant slab stays small, not divided by a near-zero std
    jittered = data + 0.01 * torch.randn_like(data)
    assert ((path.features(jittered) - path.mean) / path.std).abs().max() < 10
    with pytest.raises(ValueError, match="no volumes"):
        path.fit_standardization([])


def test_off_by_default_and_config_round_trip():
    assert CTEncoder(_config()).density is None
    assert load_ct_config("ctclip-paper").density_path is False
    cfg = _dense()
    assert cfg.density_pool == (4, 8, 8) and cfg.density_thresholds == (-0.5, 0.5)
    assert CTEncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="increasing"):
        _config(density_thresholds=[0.2, -0.9])
    with pytest.raises(ValueError, match="does not divide"):
        _config(density_path=True, density_pool=(3, 8, 8))
    with pytest.raises(ValueError, match="density_rank"):
        _config(density_path=True, density_pool=(4, 8, 8), density_rank=0)


def test_density_path_is_additive_saved_with_its_statistics_and_learns():
    torch.manual_seed(0)
    plain = CTEncoder(_config())
    dense = CTEncoder(_dense())
    missing, unexpected = dense.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["density.down.weight", "density.mean", "density.std", "density.up.weight"]
    assert not unexpected
    x = torch.rand(3, 1, 8, 16, 16) * 2 - 1
    dense.density.fit_standardization([x])
    plain.eval(), dense.eval()
    assert not torch.allclose(plain(x), dense(x), atol=1e-4)
    expected = plain(x) + dense.density.up(dense.density.down((dense.density.features(x) - dense.density.mean)
                                                               / dense.density.std))
    assert torch.allclose(dense(x), expected, atol=1e-5)
    reloaded = CTEncoder(_dense())
    reloaded.load_state_dict(dense.state_dict())  # the fitted statistics travel with the weights
    reloaded.eval()
    assert torch.allclose(reloaded(x), dense(x), atol=1e-6)
    dense(x).square().sum().backward()
    assert dense.density.down.weight.grad.abs().sum() > 0 and dense.density.up.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="density path"):
        dense(torch.zeros(1, 1, 16, 16, 16))


def test_density_path_separates_what_a_linear_embedding_confuses():
    """Same mean density: a couple of metal-bright voxels in fat-like tissue versus uniform soft
    tissue. The max and the count above 0.5 tell them apart directly."""
    uniform = torch.zeros(1, 1, 4, 8, 8)
    speckled = torch.full((1, 1, 4, 8, 8), -0.1)
    speckled[0, 0, 1, 2, 3] = speckled[0, 0, 2, 5, 5] = 1.0
    speckled = speckled - speckled.mean()
    path = DensityPath((4, 8, 8), (4, 8, 8), (0.5,), rank=2, latent_dim=4)
    (mean_a, max_a, count_a), (mean_b, max_b, count_b) = path.features(uniform)[0], path.features(speckled)[0]
    assert float(mean_a) == pytest.approx(float(mean_b), abs=1e-6)
    assert max_b > 0.9 and max_a == 0.0
    assert float(count_b) == pytest.approx(math.log(3) / math.log(257)) and count_a == 0.0
    assert count_b > 0.19  # log-count scale: two of 256 voxels are not drowned by the block's size


def _numpy_reference():
    """The numpy features of the experiment that measured them (scripts/experiments/ct_encoder)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "experiments" / "ct_encoder" / "feature_ceiling.py"
    spec = importlib.util.spec_from_file_location("feature_ceiling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.features


def _chest_like(seed: int, shape=(16, 32, 32)) -> torch.Tensor:
    """Air outside, soft tissue, aerated lung with a dense spot and a little fluid (prepared units)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.full(shape, -1.0)
    v[2:-2, 4:-4, 4:-4] = 0.04 + 0.02 * torch.randn(shape[0] - 4, shape[1] - 8, shape[2] - 8, generator=g)
    v[3:-3, 8:-8, 6:15] = -0.86 + 0.05 * torch.randn(shape[0] - 6, shape[1] - 16, 9, generator=g)
    v[3:-3, 8:-8, 17:26] = -0.86 + 0.05 * torch.randn(shape[0] - 6, shape[1] - 16, 9, generator=g)
    v[5:8, 10:13, 8:11] = 0.05  # a nodule
    v[4:6, 20:24, 20:23] = 0.7  # something dense
    return v.clamp(-1, 1)


def test_summaries_equal_the_measured_numpy_features():
    from engine.models.ct_summaries import summaries, summary_count, volume_summaries

    reference = _numpy_reference()
    for seed in range(3):
        v = _chest_like(seed)
        got = volume_summaries(v)
        want = torch.from_numpy(reference(v.numpy()))
        assert got.shape == (summary_count(),) == want.shape
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # no lung at all: the lung-block quantiles and the texture are zeros, not NaN
    solid = torch.zeros(1, 1, 16, 32, 32)
    assert torch.isfinite(summaries(solid)).all()


def test_summaries_join_the_density_path():
    from engine.models.ct_summaries import summary_count

    plain, with_summaries = _dense(input_size=(16, 32, 32)), _dense(input_size=(16, 32, 32), density_summaries=True)
    a, b = CTEncoder(plain).density, CTEncoder(with_summaries).density
    x = torch.stack([_chest_like(s) for s in range(2)])[:, None]
    fa, fb = a.features(x), b.features(x)
    assert fb.shape[1] == fa.shape[1] + summary_count() and torch.equal(fb[:, : fa.shape[1]], fa)
    assert b.down.in_features == fb.shape[1]
    enc = CTEncoder(with_summaries)
    enc.density.fit_standardization([x])
    assert enc(x).shape == (2, 16)
    assert CTEncoderConfig.from_dict(json.loads(json.dumps(with_summaries.to_dict()))) == with_summaries
    assert CTEncoderConfig.from_dict({k: v for k, v in plain.to_dict().items() if k != "density_summaries"}) == plain
    with pytest.raises(ValueError, match="density_summaries needs density_path"):
        _config(density_summaries=True)
