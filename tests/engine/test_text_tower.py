"""Text tower: real all-MiniLM-L6-v2 (mean pooling), a tiny CXR-BERT-like folder (CLS, CT-CLIP import)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from engine.errors import WeightsError
from engine.models.text import (
    TextTower,
    TextTowerConfig,
    create_text_tower,
    resolve_text_backbone,
)
from tests.engine.ctclip_fixture import FIXTURES, needs_fixture, tiny_config

torch.set_num_threads(1)

TEXTS = [
    "Cardiomegaly is present.",
    "No pleural effusion or pneumothorax. Mild bibasilar atelectasis with a small hiatal hernia.",
    "Lung nodule is not present.",
]


@pytest.fixture(scope="module")
def minilm() -> TextTower:
    torch.manual_seed(0)
    return create_text_tower("minilm")


@pytest.fixture(scope="module")
def tiny_cxr_folder(tmp_path_factory) -> str:
    """A CXR-BERT-shaped folder: ``model_type: cxr-bert``, a custom-class auto_map, weights under ``bert.``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from engine.models.text import resolve_text_backbone as resolve

    folder = tmp_path_factory.mktemp("tiny-cxr-bert")
    tokenizer = BertTokenizer.from_pretrained(str(resolve("all-MiniLM-L6-v2")), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    BertForMaskedLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    data = json.loads((folder / "config.json").read_text())
    # if remote code were ever trusted, this missing module would make loading fail
    data.update(
        model_type="cxr-bert",
        architectures=["CXRBertModel"],
        auto_map={"AutoModel": "modeling_cxrbert.CXRBertModel"},
    )
    (folder / "config.json").write_text(json.dumps(data))
    # CXR-BERT ships vocab.txt and names its own tokenizer class; only the plain BertTokenizer may be used
    (folder / "tokenizer.json").unlink()
    shutil.copy(resolve("all-MiniLM-L6-v2") / "vocab.txt", folder / "vocab.txt")
    custom = {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]}
    tokenizer_config = {"do_lower_case": True, "tokenizer_class": "CXRBertTokenizer", "auto_map": custom}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return str(folder)


def _tiny_config(folder: str, **kw) -> TextTowerConfig:
    base = dict(backbone="tiny-cxr", path=folder, pooling="cls", max_length=64, latent_dim=16)
    base.update(kw)
    return TextTowerConfig(**base)


def _reference_bert(folder: str):
    from transformers import BertModel, BertTokenizer

    return BertModel.from_pretrained(folder, local_files_only=True).eval(), BertTokenizer.from_pretrained(
        folder
    )


# --- MiniLM: the offline default -------------------------------------------------------------


def test_minilm_mean_pooling_matches_a_manual_reference(minilm):
    """One text at a time, no padding, plain mean over its tokens == the tower's padded batch."""
    from transformers import AutoModel, AutoTokenizer

    folder = str(resolve_text_backbone("all-MiniLM-L6-v2"))
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        expected = torch.stack(
            [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(dim=0) for text in TEXTS]
        )
        batch = minilm.tokenize(TEXTS)
        assert batch["attention_mask"].sum(dim=1).min() < batch["attention_mask"].shape[1]  # padding present
        pooled = minilm.pooled_features(**batch)
        encoded = minilm.encode(TEXTS)
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(encoded, expected @ minilm.projection.weight.T, atol=2e-5, rtol=1e-4)


def test_minilm_encode_shape_dtype_unnormalised(minilm):
    with torch.no_grad():
        out = minilm.encode(TEXTS)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))
    assert minilm.encode([]).shape == (0, 512)
    with pytest.raises(TypeError):
        minilm.encode("a single string")


def test_frozen_backbone_gets_no_grad_projection_does(minilm):
    minilm.train()
    assert not minilm.backbone.training and minilm.projection.training  # frozen: no dropout either
    minilm.zero_grad(set_to_none=True)
    minilm.encode(TEXTS[:2]).pow(2).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in minilm.backbone.parameters())
    assert minilm.projection.weight.grad is not None and minilm.projection.weight.grad.abs().sum() > 0
    assert set(minilm.trainable_state_dict()) == {"projection.weight"}
    minilm.eval()


def test_trainable_state_round_trip_and_mismatch(minilm):
    state = {k: torch.randn_like(v) for k, v in minilm.trainable_state_dict().items()}
    original = minilm.projection.weight.detach().clone()
    minilm.load_trainable_state_dict(state)
    assert torch.equal(minilm.projection.weight, state["projection.weight"])
    with pytest.raises(WeightsError, match="unexpected"):
        minilm.load_trainable_state_dict({**state, "extra.weight": torch.zeros(1)})
    minilm.load_trainable_state_dict({"projection.weight": original})
    entry = minilm.manifest_entry()
    assert entry["backbone"] == "all-MiniLM-L6-v2" and entry["frozen"] is True and entry["pooling"] == "mean"
    assert entry["config"]["path"] is None


def test_configs_and_resolution_errors(tmp_path):
    cxr = TextTowerConfig.named("cxr-bert")
    assert (cxr.pooling, cxr.max_length, cxr.latent_dim) == ("cls", 512, 512)
    assert TextTowerConfig.from_dict(cxr.to_dict()) == cxr
    with pytest.raises(WeightsError, match="no text tower config named 'nope'"):
        TextTowerConfig.named("nope")
    with pytest.raises(ValueError, match="pooling"):
        TextTowerConfig(pooling="max")
    with pytest.raises(ValueError, match="unknown"):
        TextTowerConfig.from_dict({"bogus": 1})
    with pytest.raises(WeightsError, match="no config.json"):
        resolve_text_backbone("x", tmp_path)
    with pytest.raises(WeightsError, match="'no-such-model' is not installed"):
        resolve_text_backbone("no-such-model")
    (tmp_path / "config.json").write_text('{"model_type": "made-up-model"}')
    with pytest.raises(WeightsError, match="cannot load text backbone"):
        TextTower(TextTowerConfig(backbone="odd", path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="cannot read text backbone config"):
        TextTower(TextTowerConfig(backbone="odd", path=str(tmp_path)))
    # CXR-BERT resolves by name only when the user has it (HF cache or a path); never downloaded
    try:
        resolve_text_backbone("CXR-BERT-specialized")
    except WeightsError as exc:
        assert "is not installed" in str(exc) and "\n" not in str(exc)


# --- a tiny CXR-BERT-like backbone: CLS pooling and the CT-CLIP import --------------------------


def test_cls_pooling_on_a_cxr_bert_like_folder(tiny_cxr_folder):
    tower = TextTower(_tiny_config(tiny_cxr_folder)).eval()
    reference, tokenizer = _reference_bert(tiny_cxr_folder)
    with torch.no_grad():
        expected = torch.stack(
            [reference(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, 0] for t in TEXTS]
        )
        pooled = tower.pooled_features(**tower.tokenize(TEXTS))
        encoded = tower.encode(TEXTS)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoded, expected @ tower.projection.weight.T, atol=1e-5, rtol=1e-4)
    assert not hasattr(tower.backbone, "pooler") or tower.backbone.pooler is None


def test_max_length_truncates(tiny_cxr_folder):
    tower = TextTower(_tiny_config(tiny_cxr_folder, max_length=8))
    assert tower.tokenize(["word " * 50])["input_ids"].shape[1] == 8


def _fake_ctclip_import(folder: str, hidden: int = 32, latent: int = 16):
    """What engine.weights.ctclip.import_ctclip gives for the text side, with CT-CLIP's quirks."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(7)
    bert = BertModel(
        BertConfig.from_pretrained(folder), add_pooling_layer=True
    ).eval()  # CT-CLIP keeps a pooler
    state = {k: v.clone() for k, v in bert.state_dict().items()}
    state["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)  # the key that breaks newer transformers
    projection = torch.randn(latent, hidden)
    return SimpleNamespace(text_state=state, text_projection=projection, logit_scale=1.0), bert


def test_load_ctclip_text_drops_position_ids_and_reproduces_ctclip(tiny_cxr_folder):
    ctclip, bert = _fake_ctclip_import(tiny_cxr_folder)
    tower = TextTower.from_ctclip(ctclip, _tiny_config(tiny_cxr_folder)).eval()
    for key, value in tower.backbone.state_dict().items():
        if key not in ("embeddings.position_ids", "embeddings.token_type_ids"):
            assert torch.equal(value, ctclip.text_state[key]), key
    assert torch.equal(tower.projection.weight, ctclip.text_projection)
    _, tokenizer = _reference_bert(tiny_cxr_folder)
    with torch.no_grad():
        # CT-CLIP: text_transformer(input_ids, attention_mask)[0][:, 0] -> to_text_latent
        batch = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        expected = (
            bert(batch.input_ids, attention_mask=batch.attention_mask)[0][:, 0] @ ctclip.text_projection.T
        )
        got = tower.encode(TEXTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_load_ctclip_text_mismatches_raise(tiny_cxr_folder):
    tower = TextTower(_tiny_config(tiny_cxr_folder), pretrained=False)
    ctclip, _ = _fake_ctclip_import(tiny_cxr_folder)
    broken = dict(ctclip.text_state)
    del broken["encoder.layer.1.output.dense.weight"]
    with pytest.raises(WeightsError, match="missing"):
        tower.load_ctclip_text(SimpleNamespace(text_state=broken, text_projection=ctclip.text_projection))
    with pytest.raises(WeightsError, match="projection has shape"):
        tower.load_ctclip_text(
            SimpleNamespace(text_state=ctclip.text_state, text_projection=torch.zeros(3, 32))
        )
    with pytest.raises(WeightsError, match="no text tower"):
        tower.load_ctclip_text(SimpleNamespace(text_state={}, text_projection=None))
    mean_tower = TextTower(_tiny_config(tiny_cxr_folder, pooling="mean"), pretrained=False)
    with pytest.raises(WeightsError, match="CLS"):
        mean_tower.load_ctclip_text(ctclip)


@needs_fixture
def test_text_tower_from_a_real_ctclip_import(tiny_cxr_folder):
    """engine.weights.ctclip.import_ctclip on a CT-CLIP-keyed checkpoint: golden image side + tiny text side."""
    from engine.models.space import LogitScale
    from engine.weights.ctclip import import_ctclip

    checkpoint = torch.load(FIXTURES / "ctclip_tiny_state_dict.pt", weights_only=True)
    fake, bert = _fake_ctclip_import(tiny_cxr_folder, latent=32)
    checkpoint.update({f"text_transformer.{k}": v for k, v in fake.text_state.items()})
    checkpoint["to_text_latent.weight"] = fake.text_projection
    imported = import_ctclip(checkpoint, config=tiny_config())
    assert "embeddings.position_ids" not in imported.text_state
    tower = TextTower.from_ctclip(imported, _tiny_config(tiny_cxr_folder, latent_dim=32)).eval()
    _, tokenizer = _reference_bert(tiny_cxr_folder)
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        expected = (
            bert(batch.input_ids, attention_mask=batch.attention_mask)[0][:, 0] @ fake.text_projection.T
        )
        torch.testing.assert_close(tower.encode(TEXTS), expected, atol=1e-5, rtol=1e-4)
    scale = LogitScale(imported.logit_scale)
    assert scale().item() == pytest.approx(checkpoint["temperature"].exp().item())


def test_tuned_top_layer_from_cached_lower_states_equals_the_full_forward():
    """``tuned_layers``: running the top layer on cached lower states is the full forward, only that
    layer and the projection get gradients, and the bundle state carries exactly them."""
    torch.manual_seed(0)
    tower = create_text_tower("minilm", tuned_layers=1)
    plain = create_text_tower("minilm")
    tokens = tower.tokenize(TEXTS)
    with torch.no_grad():
        full = plain.pooled_features(**tokens)
        via_lower = tower.pooled_from_lower(tower.lower_states(**tokens), tokens["attention_mask"])
    assert torch.allclose(full, via_lower, atol=1e-5)
    assert torch.allclose(full, tower.pooled_features(**tokens).detach(), atol=1e-5)

    tower.train()
    tower.projection(tower.pooled_from_lower(tower.lower_states(**tokens), tokens["attention_mask"])).sum().backward()
    top, below = tower.backbone.encoder.layer[-1], tower.backbone.encoder.layer[-2]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(p.grad is None for p in below.parameters())

    state = tower.trainable_state_dict()
    assert {k.split(".")[0] for k in state} == {"projection", "backbone"}
    assert all(k.startswith(f"backbone.encoder.layer.{len(tower.backbone.encoder.layer) - 1}.")
               for k in state if k.startswith("backbone"))
    with torch.no_grad():
        top.attention.output.dense.weight.add_(0.01)
    other = create_text_tower("minilm", tuned_layers=1)
    other.load_trainable_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(other.encode(TEXTS), tower.encode(TEXTS), atol=1e-5)
    with pytest.raises(WeightsError, match="missing"):
        other.load_trainable_state_dict({k: v for k, v in state.items() if k.startswith("projection")})


def test_token_states_are_the_frozen_part_so_tuning_the_top_does_not_move_them():
    tuned = create_text_tower("minilm", tuned_layers=1)
    before = tuned.token_states(TEXTS[:2])
    with torch.no_grad():
        tuned.backbone.encoder.layer[-1].output.dense.weight.mul_(2.0)
    after = tuned.token_states(TEXTS[:2])
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    plain = create_text_tower("minilm").token_states(TEXTS[:1])[0]
    assert plain.shape == before[0].shape and not torch.allclose(plain, before[0])
