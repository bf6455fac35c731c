"""engine.models.speech: pooling, freezing, unpadded encoding, batching, embeddings."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from engine import audio
from engine.models.speech import (
    SpeechStudent,
    SpeechStudentConfig,
    collate_windows,
    frame_lengths,
    length_buckets,
    list_speech_configs,
    load_speech_config,
    pool_frames,
)
from engine.weights.factory import speech_student_from_backbone

torch.set_num_threads(1)


def _tiny_encoder(layers: int = 4, seed: int = 0):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    config = WhisperConfig(
        d_model=32, encoder_layers=layers, encoder_attention_heads=4, encoder_ffn_dim=64,
        num_mel_bins=80, max_source_positions=200,  # windows of up to 400 frames (4 s) keep tests fast
    )
    return WhisperEncoder(config).eval()


def _tiny_student(trainable_layers: int = 2, **kwargs) -> SpeechStudent:
    kwargs = {"window_s": 4.0, "overlap_s": 1.0, **kwargs}
    config = SpeechStudentConfig(trainable_layers=trainable_layers, latent_dim=16, **kwargs)
    return SpeechStudent(config, _tiny_encoder())


# --------------------------------------------------------------------------- pooling


def test_pool_frames_is_a_mean_over_real_frames_only():
    torch.manual_seed(1)
    hidden = torch.randn(3, 10, 8)
    lengths = torch.tensor([10, 4, 1])
    pooled = pool_frames(hidden, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(pooled[i], hidden[i, :n].mean(0))
    # Whatever sits in the padding, even NaN or inf, changes nothing.
    scrambled = hidden.clone()
    scrambled[1, 4:] = torch.randn(6, 8) * 1e6
    scrambled[2, 1:] = float("nan")
    scrambled[2, 5] = float("inf")
    torch.testing.assert_close(pool_frames(scrambled, lengths), pooled)


def test_pool_frames_averages_windows_of_one_utterance_equally():
    torch.manual_seed(2)
    hidden = torch.randn(4, 6, 5)
    lengths = torch.tensor([6, 2, 6, 3])
    utterance = torch.tensor([0, 0, 1, 1])
    windows = pool_frames(hidden, lengths)
    per_utterance = pool_frames(hidden, lengths, utterance)
    assert per_utterance.shape == (2, 5)
    torch.testing.assert_close(per_utterance[0], (windows[0] + windows[1]) / 2)
    torch.testing.assert_close(per_utterance[1], (windows[2] + windows[3]) / 2)


@pytest.mark.parametrize("lengths", [[0, 3], [3, 7]])
def test_pool_frames_rejects_impossible_lengths(lengths):
    with pytest.raises(ValueError):
        pool_frames(torch.zeros(2, 6, 4), torch.tensor(lengths))


def test_length_buckets_limit_padding_and_batch_size():
    batches = length_buckets([3000, 600, 3000, 650, 2500, 3000], max_batch=2)
    assert batches == [[1, 3], [4, 0], [2, 5]]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_frame_lengths_follow_the_stride_two_convolution():
    assert frame_lengths(torch.tensor([1, 2, 3, 599, 600, 3000])).tolist() == [1, 1, 2, 300, 300, 1500]


# --------------------------------------------------------------------------- freezing and gradients


def test_gradients_reach_only_the_top_layers_and_projection():
    student = _tiny_student(trainable_layers=2).train()
    mel = torch.randn(2, 80, 120)
    student(mel, torch.tensor([120, 77])).pow(2).sum().backward()
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    for name, param in student.named_parameters():
        tuned = name.startswith(("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm.", "projection."))
        assert (name in trainable) == tuned, name
        if tuned:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    # Frozen modules stay in eval mode while the student trains.
    assert not student.encoder.layers[0].training and not student.encoder.conv1.training
    assert student.encoder.layers[3].training


def test_linear_probe_tunes_only_the_projection():
    student = _tiny_student(trainable_layers=0)
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {"projection.0.weight"}


def test_trainable_state_dict_round_trip():
    student = _tiny_student(trainable_layers=1, projection_hidden=(24,))
    state = student.trainable_state_dict()
    assert all(k.startswith(("encoder.layers.3.", "encoder.layer_norm.", "projection.")) for k in state)
    other = _tiny_student(trainable_layers=1, projection_hidden=(24,))
    other.encoder.load_state_dict(student.encoder.state_dict())
    with torch.no_grad():
        for param in other.parameters():
            if param.requires_grad:
                param.add_(0.1)
    mel = torch.randn(1, 80, 50)
    assert not torch.allclose(other(mel), student(mel))
    other.load_trainable_state_dict(state)
    torch.testing.assert_close(other(mel), student(mel))


# --------------------------------------------------------------------------- unpadded encoding and batching


def test_full_length_window_matches_transformers_forward():
    student = _tiny_student()
    mel = torch.randn(1, 80, 400)
    with torch.no_grad():
        ours, frames = student.encode_frames(mel, torch.tensor([400]))
        reference = student.encoder(mel).last_hidden_state
    assert frames.tolist() == [200]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_batched_windows_equal_one_at_a_time():
    student = _tiny_student()
    torch.manual_seed(3)
    windows = [torch.randn(80, n) for n in (301, 120, 37)]  # odd and even lengths
    batch, lengths = collate_windows(windows)
    batch[1, :, 120:] = 5.0  # garbage in the padding must not matter
    with torch.no_grad():
        hidden, frames = student.encode_frames(batch, lengths)
        pooled = student(batch, lengths)
        for i, window in enumerate(windows):
            alone, n = student.encode_frames(window[None], torch.tensor([window.shape[1]]))
            torch.testing.assert_close(hidden[i, : int(n[0])], alone[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(pooled[i], student(window[None])[0], atol=1e-5, rtol=1e-4)


def test_cached_lower_half_gives_the_same_embedding():
    student = _tiny_student()
    mel, lengths = collate_windows([torch.randn(80, 90), torch.randn(80, 60)])
    with torch.no_grad():
        hidden, frames = student.encode_lower(mel, lengths)
        assert hidden.shape == (2, 45, 32) and frames.tolist() == [45, 30]
        via_cache = student.projection(student.forward_upper(hidden.clone(), frames))
        torch.testing.assert_close(via_cache, student(mel, lengths))


def test_forward_groups_windows_by_utterance():
    student = _tiny_student()
    mel, lengths = collate_windows([torch.randn(80, 90), torch.randn(80, 60), torch.randn(80, 40)])
    with torch.no_grad():
        per_window = student.forward_upper(*student.encode_lower(mel, lengths))
        grouped = student(mel, lengths, torch.tensor([0, 0, 1]))
    expected = student.projection(torch.stack([(per_window[0] + per_window[1]) / 2, per_window[2]]))
    torch.testing.assert_close(grouped, expected)


def test_embed_audio_windows_long_dictations():
    student = _tiny_student()
    rng = np.random.default_rng(4)
    long_wave = (0.1 * rng.standard_normal(16_000 * 11)).astype(np.float32)
    short_wave = (0.1 * rng.standard_normal(16_000 * 3)).astype(np.float32)
    # 4 s windows, 1 s overlap (the tiny config): 1100 frames -> starts 0, 300, 600, 900.
    assert [n for _, n in student.windows_of(long_wave)] == [400, 400, 400, 200]
    embedding = student.embed_audio(long_wave)
    assert embedding.shape == (16,) and torch.isfinite(embedding).all()
    both = student.embed_waveforms([short_wave, long_wave], max_batch=2)
    torch.testing.assert_close(both[1], embedding, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[0], student.embed_audio(short_wave), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- configs


def test_shipped_configs_load_and_round_trip(tmp_path):
    assert {"whisper-base-top2", "whisper-base-linear-probe"} <= set(list_speech_configs())
    config = load_speech_config("whisper-base-top2")
    assert (config.trainable_layers, config.window_frames, config.overlap_frames) == (2, 3000, 200)
    path = tmp_path / "c.json"
    path.write_text(__import__("json").dumps(config.to_dict()))
    assert load_speech_config(str(path)) == config
    with pytest.raises(ValueError):
        SpeechStudentConfig(pooling="max")
    with pytest.raises(ValueError):
        SpeechStudentConfig.from_dict({"backbone": "whisper-base", "layers": 3})


# --------------------------------------------------------------------------- the real whisper-base


@pytest.fixture(scope="module")
def real_student(tmp_path_factory):
    config = load_speech_config("whisper-base-top2")
    return speech_student_from_backbone(config, cache_dir=tmp_path_factory.mktemp("cache")).eval()


def _espeak(text: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], check=True, capture_output=True).stdout
    import io

    import soundfile

    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return audio.to_16k(samples, rate)


def test_unpadded_embedding_is_close_to_the_padded_30s_path(real_student):
    """Measured on real speech: pooled-frame cosine unpadded vs 30 s-padded.

    The padded path lets every frame attend to up to 28 s of silence, so the two differ most
    for short clips (measured with espeak-ng: 1.6 s 0.954, 8 s 0.991, 15 s 0.996, 30 s 1.000).
    Training and inference both use the unpadded path, so this gap never reaches a score.
    """
    waveform = _espeak(
        "The lungs are clear. There is no pleural effusion. The heart size is normal "
        "and there is mild coronary artery calcification."
    )
    mel = audio.log_mel(waveform)
    assert 600 < mel.shape[1] < 1200
    with torch.no_grad():
        hidden, frames = real_student.encode_frames(torch.from_numpy(mel[None]), torch.tensor([mel.shape[1]]))
        padded = real_student.encoder(torch.from_numpy(audio.pad_frames(mel)[None])).last_hidden_state
    cosine = torch.nn.functional.cosine_similarity(pool_frames(hidden, frames), pool_frames(padded, frames)).item()
    assert cosine >= 0.99
