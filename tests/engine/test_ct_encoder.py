"""CT encoder: golden equality with CT-CLIP's CTViT, shapes, caching, checkpointing."""

from __future__ import annotations

import json
import resource
import time

import pytest
import torch
import torch.nn.functional as F

from engine.errors import BundleError
from engine.models.ct import CTEncoder, CTEncoderConfig, available_ct_configs, load_ct_config
from engine.weights.ctclip import import_ctclip
from tests.engine.ctclip_fixture import FIXTURES, needs_fixture, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(**changes) -> CTEncoderConfig:
    """cpu-small, shrunk for fast gradient tests."""
    base = dict(input_size=(16, 32, 32), dim=32, heads=2, dim_head=16, pool_heads=2, latent_dim=16)
    base.update(changes)
    return load_ct_config("cpu-small").replace(**base)


@needs_fixture
def test_golden_tiny_reproduces_ctclip_tensors():
    io = torch.load(FIXTURES / "ctclip_tiny_io.pt", weights_only=True)
    encoder = import_ctclip(FIXTURES / "ctclip_tiny_state_dict.pt", config=tiny_config()).build_encoder()
    with torch.no_grad():
        before = encoder.encode_tokens(io["input"], use_codebook=False)
        after = encoder.encode_tokens(io["input"])
        latent = F.normalize(encoder(io["input"]), dim=-1)
    torch.testing.assert_close(before, io["tokens_before_codebook"], atol=1e-5, rtol=0)
    torch.testing.assert_close(after, io["encoded_tokens"], atol=1e-5, rtol=0)
    torch.testing.assert_close(latent, io["image_latent"], atol=1e-5, rtol=0)
    # The VQ really acted: the codebook moved the tokens, and each one is a stored code.
    assert (before - after).abs().max() > 1e-2
    codes = encoder.codebook.embed
    assert all((codes == tok).all(dim=-1).any() for tok in after.reshape(-1, codes.shape[-1]))


@needs_fixture
def test_golden_needs_ctclip_temporal_peg_layout():
    """The true-grid PEG differs from CT-CLIP's reshape: the quirk is reproduced on purpose."""
    io = torch.load(FIXTURES / "ctclip_tiny_io.pt", weights_only=True)
    imp = import_ctclip(FIXTURES / "ctclip_tiny_state_dict.pt", config=tiny_config(temporal_peg_layout="grid"))
    with torch.no_grad():
        before = imp.build_encoder().encode_tokens(io["input"], use_codebook=False)
    assert (before - io["tokens_before_codebook"]).abs().max() > 1e-3


def test_relative_position_bias_equals_all_pairs_mlp():
    torch.manual_seed(0)
    encoder = CTEncoder(_small()).eval()
    bias_module = encoder.rel_pos_bias
    h, w = 3, 5
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()
    rel = grid[:, None] - grid[None, :]
    rel = torch.sign(rel) * torch.log(rel.abs() + 1)
    naive = rel
    for i, layer in enumerate(bias_module.layers):
        naive = layer(naive)
        naive = F.leaky_relu(naive, 0.1) if i < len(bias_module.layers) - 1 else naive
    with torch.no_grad():
        got = bias_module(h, w, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(got, naive.permute(2, 0, 1), atol=1e-6, rtol=1e-5)


def test_bias_cache_is_reused_and_invalidated():
    torch.manual_seed(0)
    encoder = CTEncoder(_small()).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    bias = encoder.rel_pos_bias
    with torch.no_grad():
        first = encoder(x)
        second = encoder(x)
    assert bias.mlp_evaluations == 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    with torch.no_grad():
        bias.layers[-1].bias.add_(1.0)  # a weight change (optimizer step, load) must invalidate
        third = encoder(x)
    assert bias.mlp_evaluations == 2
    assert not torch.equal(first, third)
    # With gradients needed, the bias is computed fresh and receives gradient.
    encoder.train()
    encoder(x).sum().backward()
    assert bias.mlp_evaluations == 3
    assert bias.layers[0].weight.grad is not None and bias.layers[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_equal_gradients():
    torch.manual_seed(0)
    plain = CTEncoder(_small()).train()
    ckpt = CTEncoder(_small(grad_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 32, 32)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)
    assert ckpt.spatial.grad_checkpointing and not plain.spatial.grad_checkpointing


def test_codebook_straight_through_gradient():
    torch.manual_seed(0)
    encoder = CTEncoder(_small(codebook_size=16)).train()
    x = torch.randn(1, 1, 16, 32, 32)
    tokens = encoder.encode_tokens(x)
    # Straight-through: the values are the codes (up to x + (q - x) rounding).
    nearest = torch.cdist(tokens.detach().reshape(-1, 32), encoder.codebook.embed).min(dim=1).values
    assert nearest.max() < 1e-5
    tokens.sum().backward()
    assert encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not encoder.codebook.embed.requires_grad


def test_cpu_small_shapes_and_size():
    cfg = load_ct_config("cpu-small")
    assert cfg.token_grid == (8, 8, 8)
    torch.manual_seed(0)
    encoder = CTEncoder(cfg).eval()
    n_bytes = sum(t.numel() * t.element_size() for t in encoder.state_dict().values())
    assert n_bytes <= 20 * 2**20, n_bytes
    x = torch.randn(2, 1, *cfg.input_size)
    with torch.no_grad():
        tokens = encoder.encode_tokens(x)
        latent = encoder(x)
    assert tokens.shape == (2, 8, 8, 8, 256)
    assert latent.shape == (2, cfg.latent_dim) and torch.isfinite(latent).all()
    # Batch items are encoded independently.
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[1:]), latent[1:], atol=1e-5, rtol=1e-4)


def test_paper_config_shapes_on_meta_device():
    cfg = load_ct_config("ctclip-paper")
    assert cfg.token_grid == (24, 24, 24) and cfg.patch_numel == 4000 and cfg.ff_inner == 1365
    with torch.device("meta"):
        encoder = CTEncoder(cfg).eval()
        x = torch.empty(2, 1, *cfg.input_size)
        with torch.no_grad():
            assert encoder.encode_tokens(x).shape == (2, 24, 24, 24, 512)
            assert encoder(x).shape == (2, 512)
    assert encoder.pool.proj.weight.shape == (512, 24 * 24 * 512)


def test_input_shape_errors():
    encoder = CTEncoder(tiny_config() if FIXTURES.is_dir() else load_ct_config("ctclip-paper").replace(
        input_size=(20, 40, 40), dim=64, heads=2, dim_head=16, codebook_size=32, latent_dim=32))
    with pytest.raises(ValueError, match="expects"):
        encoder(torch.zeros(1, 1, 20, 60, 40))
    with pytest.raises(ValueError, match="multiple"):
        encoder(torch.zeros(1, 1, 15, 40, 40))
    with pytest.raises(ValueError):
        encoder(torch.zeros(1, 20, 40, 40))


def test_config_json_roundtrip_and_loading(tmp_path):
    assert {"ctclip-paper", "cpu-small"} <= set(available_ct_configs())
    for name in ("ctclip-paper", "cpu-small"):
        cfg = load_ct_config(name)
        assert CTEncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(load_ct_config("cpu-small").replace(name="mine", dim=128).to_dict()))
    assert load_ct_config(path).dim == 128
    with pytest.raises(BundleError, match="no such CT encoder config"):
        load_ct_config("nope")
    path.write_text(json.dumps({"dim": 64, "colour": "red"}))
    with pytest.raises(BundleError, match="colour"):
        load_ct_config(path)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CTEncoderConfig(input_size=(240, 470, 480))


@pytest.mark.slow
def test_paper_size_forward_time_and_memory():
    """Random-weight paper encoder on one 240x480x480 volume (run with -m slow -s)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = CTEncoder(load_ct_config("ctclip-paper")).eval()
    x = torch.rand(1, 1, 240, 480, 480) * 2 - 1
    with torch.no_grad():
        encoder(x)  # warm-up (bias cache, allocator)
        start = time.perf_counter()
        latent = encoder(x)
        seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npaper CT encoder: {seconds:.2f} s/volume, peak RSS {peak_gib:.2f} GiB")
    assert latent.shape == (1, 512) and torch.isfinite(latent).all()
