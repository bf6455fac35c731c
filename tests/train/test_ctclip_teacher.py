"""``speechct-train teacher --from-ctclip``: CT-CLIP's checkpoint as the frozen teacher, end to end.

The checkpoint is the golden tiny CT-CLIP fixture (``tests/fixtures/ctclip-tiny``: CT-CLIP's own key
names, image side only) plus what a released checkpoint also holds: a tiny random ``BertModel`` as
``text_transformer.*`` (with the pooler and the ``position_ids`` buffer CT-CLIP saves), a
``to_text_latent`` and a temperature above the trainer's clamp (exp(5) = 148 > 100). The tokenizer folder
is shaped as CXR-BERT's (MiniLM's uncased WordPiece ``vocab.txt``; ``config.json`` and
``tokenizer_config.json`` naming custom classes that must never be loaded). The chain: teacher folder ->
one student step on the tiny training set -> export -> ``speechct rank``, whose probabilities must be
CT-CLIP's zero-shot probabilities computed from the checkpoint's tensors directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.findings import zero_shot_probabilities
from engine.labels import LABELS, prompt_pair
from tests.engine.ctclip_fixture import FIXTURES, needs_fixture, tiny_config
from train.cli import main as train_main

from .training_fixtures import SMOKE_CONFIG, make_tiny_data

pytestmark = needs_fixture

TEMPERATURE = 5.0
TEXTS = ["Cardiomegaly is present.", "No pleural effusion. Mild bibasilar atelectasis with a hiatal hernia."]


def _bert(vocab_size: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(3)
    return BertModel(config, add_pooling_layer=True).eval()  # CT-CLIP's BertModel keeps its pooler


@pytest.fixture(scope="module")
def ctclip(tmp_path_factory):
    """(checkpoint, tokenizer folder, run config file, reference BERT, text projection, data folder)."""
    from engine.models.text import resolve_text_backbone

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ctclip-teacher")
    tokenizer = root / "cxr-bert"
    tokenizer.mkdir()
    vocab = resolve_text_backbone("all-MiniLM-L6-v2") / "vocab.txt"
    shutil.copy(vocab, tokenizer / "vocab.txt")
    bert = _bert(len(vocab.read_text(encoding="utf-8").splitlines()))
    # shaped as microsoft/BiomedVLP-CXR-BERT-specialized's folder: custom classes that must never be loaded
    bert_cfg = {**bert.config.to_dict(), "model_type": "cxr-bert", "architectures": ["CXRBertModel"],
                "auto_map": {"AutoModel": "modeling_cxrbert.CXRBertModel"}}
    (tokenizer / "config.json").write_text(json.dumps(bert_cfg))
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]}}))
    state = torch.load(FIXTURES / "ctclip_tiny_state_dict.pt", weights_only=True)
    state.update({f"text_transformer.{k}": v.clone() for k, v in bert.state_dict().items()})
    state["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]
    projection = torch.randn(32, 32, generator=torch.Generator().manual_seed(4))
    state["to_text_latent.weight"] = projection
    state["temperature"] = torch.tensor(TEMPERATURE)
    checkpoint = root / "CT-CLIP_tiny.pt"
    torch.save(state, checkpoint)
    # the smoke config with the tiny CTViT and 20×40×40 volumes (the tiny data's 16×32×32, padded)
    cfg = json.loads(SMOKE_CONFIG.read_text())
    cfg["name"] = "ctclip-tiny"
    cfg["preprocess"] = {**cfg["preprocess"], "name": "smoke-20x40", "shape": [20, 40, 40]}
    cfg["ct_encoder"] = tiny_config().to_dict()
    cfg["text_tower"] = {"backbone": "CXR-BERT-specialized", "pooling": "cls", "max_length": 512, "latent_dim": 32}
    cfg["speech"] = {**cfg["speech"], "latent_dim": 32}
    config = root / "ctclip-tiny.json"
    config.write_text(json.dumps(cfg))
    data = make_tiny_data(root / "data", n_train=8, n_valid=4)
    return checkpoint, tokenizer, config, bert, projection, data


@pytest.fixture(scope="module")
def run(ctclip, tmp_path_factory):
    checkpoint, tokenizer, config, *_ = ctclip
    out = tmp_path_factory.mktemp("ctclip-run") / "run"
    rc = train_main(["teacher", "--from-ctclip", str(checkpoint), "--tokenizer", str(tokenizer),
                     "--config", str(config), "--out", str(out)])
    assert rc == 0
    return out


def _reference_text(ctclip, texts) -> torch.Tensor:
    """CT-CLIP's text latent: BertTokenizer(do_lower_case) -> BertModel CLS -> to_text_latent."""
    from transformers import BertTokenizer

    _, tokenizer, _, bert, projection, _ = ctclip
    tok = BertTokenizer.from_pretrained(str(tokenizer), do_lower_case=True)
    batch = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return bert(batch.input_ids, attention_mask=batch.attention_mask)[0][:, 0] @ projection.T


def test_teacher_folder_holds_ctclip(ctclip, run):
    from train.recipes import load_teacher

    folder = run / "teacher"
    assert {"model.safetensors", "model.json", "text"} <= {p.name for p in folder.iterdir()}
    assert not list(run.glob(".teacher.partial-*"))
    teacher = load_teacher(folder)
    meta = teacher.meta
    assert meta["kind"] == "teacher" and meta["source"]["kind"] == "ctclip"
    assert meta["config"]["text_tower"]["path"] == "text"  # inside the teacher folder, relative
    assert "auto_map" not in json.loads((folder / "text" / "tokenizer_config.json").read_text())
    # CT side: CT-CLIP's own image latent of the golden input
    io = torch.load(FIXTURES / "ctclip_tiny_io.pt", weights_only=True)
    with torch.no_grad():
        latent = F.normalize(teacher.model.ct(io["input"]), dim=-1)
    torch.testing.assert_close(latent, io["image_latent"], atol=1e-5, rtol=1e-4)
    # text side: CXR-BERT's CLS through to_text_latent, tokenised lower-case as CT-CLIP does
    with torch.no_grad():
        got = teacher.text.encode([t.upper() for t in TEXTS])
    torch.testing.assert_close(got, _reference_text(ctclip, TEXTS), atol=1e-5, rtol=1e-4)
    # the temperature as CT-CLIP uses it: exp(temperature), not clamped at the trainer's 100
    assert teacher.logit_scale == pytest.approx(np.exp(TEMPERATURE), rel=1e-5)


def test_teacher_folder_can_move(run, tmp_path):
    from train.recipes import load_teacher

    moved = tmp_path / "elsewhere"
    shutil.copytree(run / "teacher", moved)
    teacher = load_teacher(moved)
    assert Path(teacher.text.folder) == moved / "text"


def test_student_export_and_rank_on_the_ctclip_teacher(ctclip, run, monkeypatch, capsys):
    """teacher folder -> one student step (the packaged Whisper-base, top layer) -> export -> rank."""
    from engine.cli import main as engine_main
    from engine.io import load_volume
    from engine.preprocess import prepare_ct
    from engine.weights.ctclip import import_ctclip
    from train.recipes import load_teacher

    checkpoint, _, config, *_, data = ctclip
    args = ["--config", str(config), "--data", str(data), "--out", str(run), "--quiet", "--threads", "1"]
    assert train_main(["student", *args, "--max-steps", "1"]) == 0
    assert (run / "student" / "model.safetensors").is_file() and (run / "dictation" / "head.safetensors").is_file()
    bundle = run / "bundle"
    assert train_main(["export", "--out", str(run), "--data", str(data), "--bundle", str(bundle)]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["text"]["frozen"] is False  # CT-CLIP tuned its BERT: the bundle carries it
    assert manifest["space"]["logit_scale"] == pytest.approx(np.exp(TEMPERATURE), rel=1e-5)
    capsys.readouterr()

    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(run / "emb"))
    volume = next((data / "ct-rate").rglob("valid_1_a_1.nii.gz"))
    # a spoken dictation (the training fixture's clips are tones, which the engine refuses as no speech)
    wav = Path(__file__).resolve().parents[2] / "assets" / "samples" / "study-002" / "dictation.wav"
    code = engine_main(["rank", "--bundle", str(bundle), "--ct", str(volume), "--audio", str(wav), "--json",
                        "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert len(report["findings"]) == len(LABELS) and report["dictation"] is not None
    # the engine's probabilities are CT-CLIP's zero-shot ones, computed from the checkpoint's tensors
    spec = load_teacher(run / "teacher").spec
    x = torch.from_numpy(np.asarray(prepare_ct(load_volume(volume), spec), dtype=np.float32))[None, None]
    encoder = import_ctclip(checkpoint, config=tiny_config()).build_encoder()
    with torch.no_grad():
        image = encoder(x)
    prompts = _reference_text(ctclip, [t for label in LABELS for t in prompt_pair(label)])
    expected = zero_shot_probabilities(image, prompts[0::2], prompts[1::2], float(np.exp(TEMPERATURE)))[0]
    got = {f["label"]: f["probability"] for f in report["findings"]}
    np.testing.assert_allclose([got[label] for label in LABELS], expected.numpy(), atol=1e-4)
    assert float(expected.max() - expected.min()) > 1e-3  # the comparison can tell findings apart


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_give_one_line_naming_the_file(ctclip, tmp_path, capsys):
    checkpoint, tokenizer, config, *_ = ctclip
    state = torch.load(checkpoint, weights_only=True)

    def teacher(ckpt, tok=tokenizer, cfg=config, out=tmp_path / "run"):
        args = ["teacher", "--from-ctclip", str(ckpt), "--tokenizer", str(tok), "--out", str(out)]
        return train_main(args + (["--config", str(cfg)] if cfg else []))

    # a checkpoint without the text tower (the fixture as CT-CLIP's image side only)
    image_only = tmp_path / "image_only.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith(("text_transformer.", "to_text_latent"))},
               image_only)
    assert teacher(image_only) == 2
    line = _one_line_error(capsys)
    assert str(image_only) in line and "no text tower" in line
    # a tokenizer folder without vocab.txt
    empty = tmp_path / "no-vocab"
    empty.mkdir()
    assert teacher(checkpoint, tok=empty) == 2
    line = _one_line_error(capsys)
    assert str(empty) in line and "vocab.txt" in line
    # a vocabulary without the BERT's config.json: a 32-wide BERT's head count cannot be guessed
    vocab_only = tmp_path / "vocab-only"
    vocab_only.mkdir()
    shutil.copy(tokenizer / "vocab.txt", vocab_only / "vocab.txt")
    assert teacher(checkpoint, tok=vocab_only) == 2
    line = _one_line_error(capsys)
    assert str(vocab_only) in line and "num_attention_heads" in line
    # a vocabulary that is not the one the text tower was trained with
    short = tmp_path / "short-vocab"
    short.mkdir()
    shutil.copy(tokenizer / "config.json", short / "config.json")
    (short / "vocab.txt").write_text("\n".join((tokenizer / "vocab.txt").read_text().splitlines()[:500]) + "\n")
    assert teacher(checkpoint, tok=short) == 2
    line = _one_line_error(capsys)
    assert str(short / "vocab.txt") in line and "500 tokens" in line
    # the paper config (the default) does not describe the tiny CTViT
    assert teacher(checkpoint, cfg=None) == 2
    line = _one_line_error(capsys)
    assert "paper.json" in line and "dim 64 in the checkpoint, 512 in the config" in line
    # a BERT config.json that disagrees with the weights
    wrong = tmp_path / "wrong-config"
    shutil.copytree(tokenizer, wrong)
    bert_cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**bert_cfg, "num_hidden_layers": 12}))
    assert teacher(checkpoint, tok=wrong) == 2
    line = _one_line_error(capsys)
    assert str(wrong / "config.json") in line and "num_hidden_layers 12" in line
    # text weights that do not fit fail after the folder was started: nothing is left behind
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in state.items() if k != "text_transformer.encoder.layer.1.output.dense.weight"},
               broken)
    assert teacher(broken) == 2
    line = _one_line_error(capsys)
    assert str(broken) in line and "missing" in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    # a missing checkpoint, and --from-ctclip without --tokenizer
    assert teacher(tmp_path / "nope.pt") == 2
    assert "not found" in _one_line_error(capsys)
    assert train_main(["teacher", "--from-ctclip", str(checkpoint), "--out", str(tmp_path / "r")]) == 2
    assert "--tokenizer" in _one_line_error(capsys)


def test_refuses_to_overwrite_a_teacher(ctclip, run, capsys):
    checkpoint, tokenizer, config, *_ = ctclip
    before = (run / "teacher" / "model.safetensors").read_bytes()
    assert train_main(["teacher", "--from-ctclip", str(checkpoint), "--tokenizer", str(tokenizer),
                       "--config", str(config), "--out", str(run)]) == 2
    assert "already here" in _one_line_error(capsys)
    assert (run / "teacher" / "model.safetensors").read_bytes() == before


def test_bert_config_read_from_the_weights_without_a_config_file(tmp_path):
    """No config.json beside vocab.txt: sizes from the shapes, BERT's 64-wide heads (CXR-BERT: 768 -> 12)."""
    from train.ctclip_teacher import bert_config

    state = {"embeddings.word_embeddings.weight": torch.empty(100, 128),
             "embeddings.position_embeddings.weight": torch.empty(40, 128),
             "embeddings.token_type_embeddings.weight": torch.empty(2, 128),
             "encoder.layer.0.intermediate.dense.weight": torch.empty(256, 128),
             "encoder.layer.2.output.dense.weight": torch.empty(128, 256)}
    config = bert_config(state, tmp_path, tmp_path / "ckpt.pt")
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.max_position_embeddings) == (100, 128, 3, 2, 256, 40)
    assert config.hidden_act == "gelu" and config.layer_norm_eps == 1e-12
