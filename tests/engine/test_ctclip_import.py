"""CT-CLIP checkpoint import: every key accounted for, errors that name the keys."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from engine.errors import WeightsError
from engine.models.ct import CTEncoder, load_ct_config
from engine.weights.ctclip import import_ctclip, infer_ctclip_config
from tests.engine.ctclip_fixture import FIXTURES, needs_fixture, tiny_config

TEXT_KEYS = {  # a few CXR-BERT keys as CT-CLIP stores them
    "text_transformer.embeddings.word_embeddings.weight": (8, 4),
    "text_transformer.embeddings.position_ids": (1, 512),
    "text_transformer.encoder.layer.0.attention.self.query.weight": (4, 4),
    "to_text_latent.weight": (3, 4),
    "to_text_latent_extra.weight": (3, 4),
}


def _tiny_state() -> dict:
    return torch.load(FIXTURES / "ctclip_tiny_state_dict.pt", weights_only=True)


def _with_text(state: dict, device: str = "cpu") -> dict:
    state = dict(state)
    for key, shape in TEXT_KEYS.items():
        state[key] = torch.ones(shape, device=device)
    return state


@needs_fixture
def test_every_paper_key_is_used_or_deliberately_dropped():
    shapes = json.loads((FIXTURES / "ctclip_paper_image_keys.json").read_text())
    meta = _with_text({k: torch.empty(s, device="meta") for k, s in shapes.items()}, device="meta")
    paper = load_ct_config("ctclip-paper")
    imp = import_ctclip(meta, config=paper)

    used_sources = set(shapes) - set(imp.dropped) - {"temperature"}
    assert len(imp.ct_state) == len(used_sources)  # one encoder tensor per used key, no merging
    assert not imp.unmatched
    assert set(imp.dropped) | used_sources | {"temperature"} >= set(shapes)
    assert all(imp.dropped[k] for k in imp.dropped)  # every drop has a reason
    dropped_kinds = " ".join(imp.dropped)
    for part in ("to_pixels", "to_patch_emb_first_frame", "to_visual_latent_extra", "cluster_size", "position_ids"):
        assert part in dropped_kinds
    # The paper encoder has exactly these tensors with exactly these shapes.
    with torch.device("meta"):
        expected = CTEncoder(paper).state_dict()
    assert set(expected) == set(imp.ct_state)
    for key, tensor in expected.items():
        assert tuple(imp.ct_state[key].shape) == tuple(tensor.shape), key
    assert imp.ct_state["pool.proj.weight"].shape == (512, 294912)
    assert imp.ct_state["codebook.embed"].shape == (8192, 512)
    # And the configuration can be read back from the shapes alone.
    inferred = infer_ctclip_config(meta)
    assert inferred.replace(name=paper.name) == paper


@needs_fixture
def test_text_side_is_split_off_and_position_ids_dropped():
    imp = import_ctclip(_with_text(_tiny_state()), config=tiny_config())
    assert set(imp.text_state) == {"embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"}
    assert "text_transformer.embeddings.position_ids" in imp.dropped
    assert imp.text_projection is not None and imp.text_projection.shape == (3, 4)
    assert imp.logit_scale == pytest.approx(1.0)
    assert "to_text_latent_extra.weight" in imp.dropped


@needs_fixture
def test_file_formats(tmp_path):
    state = _tiny_state()
    pt = tmp_path / "ctclip.pt"
    torch.save({"module." + k: v for k, v in state.items()}, pt)  # a DDP-style prefix
    ref = import_ctclip(state, config=tiny_config())
    from_pt = import_ctclip(pt, config=tiny_config())
    assert set(from_pt.ct_state) == set(ref.ct_state)
    assert all(torch.equal(from_pt.ct_state[k], ref.ct_state[k]) for k in ref.ct_state)

    legacy = tmp_path / "legacy.pth"  # pre-zip torch.save format: cannot be memory-mapped
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert set(import_ctclip(legacy, config=tiny_config()).ct_state) == set(ref.ct_state)

    from safetensors.torch import save_file

    st = tmp_path / "ctclip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    from_st = import_ctclip(st)  # config inferred from the shapes
    assert from_st.config.dim == 64 and from_st.config.input_size[1:] == (40, 40)
    assert all(torch.equal(from_st.ct_state[k], ref.ct_state[k]) for k in ref.ct_state)


def test_unreadable_files_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        import_ctclip(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        import_ctclip(garbage)

    evil = tmp_path / "evil.pt"
    torch.save({"x": Fraction(1, 3)}, evil)  # an arbitrary object: weights_only loading refuses it
    with pytest.raises(WeightsError, match="evil.pt"):
        import_ctclip(evil)


@needs_fixture
def test_unknown_missing_and_misshaped_keys_are_named():
    state = _tiny_state()
    unknown = dict(state, **{"visual_transformer.mystery.weight": torch.ones(2), "surprise": torch.ones(1)})
    with pytest.raises(WeightsError, match="visual_transformer.mystery.weight, surprise"):
        import_ctclip(unknown, config=tiny_config())
    lenient = import_ctclip(unknown, config=tiny_config(), strict=False)
    assert lenient.unmatched == ["visual_transformer.mystery.weight", "surprise"]

    missing = {k: v for k, v in state.items() if "enc_temporal_transformer.layers.0.3.4" not in k}
    with pytest.raises(WeightsError, match=r"missing .*temporal.blocks.0.ff.proj_out.weight"):
        import_ctclip(missing, config=tiny_config())

    with pytest.raises(WeightsError, match="shape mismatch: pool.proj.weight"):
        import_ctclip(state, config=tiny_config(latent_dim=16))

    uninitialised = dict(state)
    uninitialised["visual_transformer.vq._codebook.initted"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="never initialised"):
        import_ctclip(uninitialised, config=tiny_config())
