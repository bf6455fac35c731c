"""The speech student: a Whisper encoder with its top layers tuned, pooled, projected.

Shapes and units:
- mel windows ``[B, n_mels=80, T]`` log-mel frames (10 ms each, ``engine.audio.log_mel``),
  ``T`` at most 3000 (30 s); ``lengths [B]`` counts each window's real frames;
- encoder frames ``[B, T', D]`` with ``T' = ceil(T / 2)`` (20 ms each; Whisper's second
  convolution has stride 2), ``D = d_model`` (512 for whisper-base);
- embeddings ``[U, latent_dim]`` per utterance, NOT normalised (the shared space normalises).

Whisper's own ``WhisperEncoder.forward`` insists on 3000 frames. Here the same modules run on
unpadded windows instead: the convolutions see zeros past each window's end (exactly what they
see on an unpadded input) and the positional table is sliced to the real length, so a 6 s
dictation costs 300 encoder frames, not 1500. Windows of different lengths batch together
with a key mask; padded frames never reach a real frame or the pooled output.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine import audio
from engine.errors import WeightsError

POOLINGS = ("mean",)


@dataclass
class SpeechStudentConfig:
    """Speech student hyper-parameters (stored in a bundle's ``speech`` section).

    ``trainable_layers``: how many top encoder layers are tuned (paper: 2; 0 = linear probe).
    ``projection_hidden``: hidden widths of an MLP head; empty = one bias-free linear map
    (CT-CLIP's text projection is one too).
    """

    backbone: str = "whisper-base"
    trainable_layers: int = 2
    window_s: float = 30.0
    overlap_s: float = 2.0
    latent_dim: int = 512
    pooling: str = "mean"
    projection_hidden: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        self.projection_hidden = tuple(int(h) for h in self.projection_hidden)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.trainable_layers < 0:
            raise ValueError(f"trainable_layers must be >= 0, got {self.trainable_layers}")
        if not 0 <= self.overlap_s < self.window_s <= 30.0:
            raise ValueError(f"need 0 <= overlap_s < window_s <= 30, got {self.overlap_s}, {self.window_s}")

    @property
    def window_frames(self) -> int:
        return int(round(self.window_s * audio.FRAMES_PER_SECOND))

    @property
    def overlap_frames(self) -> int:
        return int(round(self.overlap_s * audio.FRAMES_PER_SECOND))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["projection_hidden"] = list(self.projection_hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SpeechStudentConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown speech config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> SpeechStudentConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def list_speech_configs() -> list[str]:
    """Names of the shipped configs in ``engine/configs/speech/``."""
    folder = importlib.resources.files("engine") / "configs" / "speech"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_speech_config(name: str) -> SpeechStudentConfig:
    """A shipped config by name (e.g. ``whisper-base-top2``) or a path to a JSON file."""
    if Path(name).suffix == ".json" and Path(name).is_file():
        return SpeechStudentConfig.from_json(name)
    resource = importlib.resources.files("engine") / "configs" / "speech" / f"{name}.json"
    if not resource.is_file():
        raise ValueError(f"unknown speech config {name!r}; shipped: {', '.join(list_speech_configs())}")
    return SpeechStudentConfig.from_dict(json.loads(resource.read_text()))


# --------------------------------------------------------------------------- pooling


def frame_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Encoder frames per window from mel frames: ``ceil(T / 2)`` (conv2 has stride 2)."""
    return torch.div(mel_lengths + 1, 2, rounding_mode="floor")


def padding_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """``[B, total]`` bool, True at real frames (index < length)."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


def pool_frames(
    hidden: torch.Tensor,
    lengths: torch.Tensor,
    utterance: torch.Tensor | None = None,
) -> torch.Tensor:
    """THE speech pooling, shared by training and inference.

    ``hidden [B, T, D]`` encoder frames of B windows, ``lengths [B]`` real frames per window.
    Each window: mean over its real frames only (padding never counts). Then, if
    ``utterance [B]`` (ints 0..U-1, which utterance each window belongs to) is given, the
    windows of one utterance are averaged with equal weight, giving ``[U, D]``; else ``[B, D]``.
    """
    if hidden.ndim != 3 or lengths.ndim != 1 or lengths.shape[0] != hidden.shape[0]:
        raise ValueError(f"pool_frames needs hidden [B, T, D] and lengths [B], got {tuple(hidden.shape)}, {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > hidden.shape[1]).any()):
        raise ValueError(f"window lengths must be in [1, {hidden.shape[1]}], got {lengths.tolist()}")
    mask = padding_mask(lengths.to(hidden.device), hidden.shape[1]).unsqueeze(-1)
    # where() rather than a product, so that NaN or inf in padding cannot leak into the sum.
    summed = torch.where(mask, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(dim=1)
    windows = summed / lengths.to(hidden.device, hidden.dtype).unsqueeze(-1)
    if utterance is None:
        return windows
    utterance = utterance.to(hidden.device)
    count = int(utterance.max().item()) + 1
    totals = torch.zeros(count, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    totals = totals.index_add(0, utterance, windows)
    per_utterance = torch.bincount(utterance, minlength=count).to(hidden.dtype).unsqueeze(-1)
    if bool((per_utterance == 0).any()):
        raise ValueError("utterance indices must cover 0..U-1 without gaps")
    return totals / per_utterance


def collate_windows(windows: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[80, T_i]`` windows into ``[B, 80, max T]`` (zeros past each end) and ``lengths [B]``.

    The pad value does not matter: the encoder masks padded frames before every operation
    that mixes frames.
    """
    lengths = torch.tensor([w.shape[-1] for w in windows], dtype=torch.long)
    batch = torch.zeros(len(windows), windows[0].shape[0], int(lengths.max()), dtype=torch.float32)
    for i, window in enumerate(windows):
        batch[i, :, : window.shape[-1]] = torch.as_tensor(window, dtype=torch.float32)
    return batch, lengths


def length_buckets(lengths: list[int], max_batch: int = 8, max_waste: float = 0.25) -> list[list[int]]:
    """Group indices of windows into batches of similar length (sorted, shortest first).

    A batch closes at ``max_batch`` windows or when the next window is more than
    ``1 + max_waste`` times the batch's shortest, so padding never costs more than ~25 %
    (a 6 s tail window is not padded to 30 s next to a full one).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < max_batch and lengths[index] <= (1 + max_waste) * lengths[current[0]]:
            current.append(index)
        else:
            batches.append([index])
    return batches


# --------------------------------------------------------------------------- model


class SpeechStudent(nn.Module):
    """Whisper encoder (all but the top ``trainable_layers`` frozen) + frame pooling + projection.

    Build with ``engine.weights.factory.speech_student_from_backbone(config)`` (resolves and loads the
    Whisper weights: models never load files) or ``SpeechStudent(config, encoder)`` with any transformers
    ``WhisperEncoder``.
    """

    def __init__(self, config: SpeechStudentConfig, encoder: nn.Module, backbone=None):
        super().__init__()
        self.config = config
        self.backbone = backbone  # engine.weights.whisper.WhisperBackbone, for bundles (name, sha256)
        self.encoder = encoder
        n_layers = len(encoder.layers)
        if config.trainable_layers > n_layers:
            raise WeightsError(f"trainable_layers={config.trainable_layers} but the encoder has {n_layers} layers")
        self.split = n_layers - config.trainable_layers
        d_model = encoder.config.d_model
        widths = [d_model, *config.projection_hidden, config.latent_dim]
        blocks: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            blocks.append(nn.Linear(w_in, w_out, bias=not last or len(widths) > 2))
            if not last:
                blocks.append(nn.GELU())
        self.projection = nn.Sequential(*blocks)
        self._freeze()

    # ----------------------------------------------------------------- freezing

    def frozen_modules(self) -> list[nn.Module]:
        enc = self.encoder
        frozen = [enc.conv1, enc.conv2, enc.embed_positions, *enc.layers[: self.split]]
        if self.config.trainable_layers == 0:
            frozen.append(enc.layer_norm)  # a linear probe tunes nothing of Whisper
        return frozen

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> SpeechStudent:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # frozen layers stay in inference behaviour while the top trains
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (tuned layers, final norm, projection): what a bundle stores."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise WeightsError(f"speech weights do not match the config: missing {missing[:3]}, unexpected {extra[:3]}")
        self.load_state_dict(state, strict=False)

    # ----------------------------------------------------------------- encoder pieces

    def _attention_mask(self, lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor | None:
        if bool((lengths == total).all()):
            return None  # nothing padded: let attention take its fastest path
        keep = padding_mask(lengths, total)
        mask = torch.zeros(keep.shape, dtype=dtype, device=lengths.device)
        mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
        return mask[:, None, None, :]  # [B, 1, 1, T]: broadcast over heads and queries

    def _run_layers(self, hidden, lengths, layers) -> torch.Tensor:
        mask = self._attention_mask(lengths, hidden.shape[1], hidden.dtype)
        for layer in layers:
            hidden = layer(hidden, mask)
        return hidden

    def front_end(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolutions + positions on unpadded (or masked) windows: ``[B, 80, T] -> [B, T', D]``."""
        enc = self.encoder
        if mel.ndim != 3 or mel.shape[1] != enc.config.num_mel_bins:
            raise ValueError(f"mel must be [B, {enc.config.num_mel_bins}, T], got {tuple(mel.shape)}")
        max_frames = 2 * enc.config.max_source_positions
        if mel.shape[-1] > max_frames:
            raise ValueError(f"windows hold at most {max_frames} mel frames, got {mel.shape[-1]}")
        lengths = lengths.to(mel.device)
        dtype = enc.conv1.weight.dtype
        # Zero past each window's end before each convolution: the same zeros the convolutions'
        # own padding supplies at the end of an unpadded input.
        mel = mel.to(dtype) * padding_mask(lengths, mel.shape[-1])[:, None, :]
        x = nn.functional.gelu(enc.conv1(mel))
        x = x * padding_mask(lengths, x.shape[-1])[:, None, :]
        x = nn.functional.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)
        hidden = x + enc.embed_positions.weight[: x.shape[1]]
        return hidden, frame_lengths(lengths)

    def encode_lower(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen part: front end + the bottom ``layers - trainable_layers`` layers, no gradients.

        Returns ``(hidden [B, T', D], frame_lengths [B])``; cacheable per window for training.
        """
        with torch.no_grad():
            hidden, frames = self.front_end(mel, lengths)
            hidden = self._run_layers(hidden, frames, self.encoder.layers[: self.split])
        return hidden, frames

    def upper_frames(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Tuned part: top layers + final norm, ``[B, T', D] -> [B, T', D]`` (the frames before pooling)."""
        hidden = self._run_layers(hidden, frames.to(hidden.device), self.encoder.layers[self.split :])
        return self.encoder.layer_norm(hidden)

    def forward_upper(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Tuned part, then ``pool_frames``: ``[B, T', D] -> [B, D]`` per window."""
        return pool_frames(self.upper_frames(hidden, frames), frames.to(hidden.device))

    def encode_frames(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole encoder on unpadded windows, with gradients where parameters want them.

        Returns last hidden states ``[B, T', D]`` (after the final layer norm) and frame lengths.
        """
        hidden, frames = self.front_end(mel, lengths)
        hidden = self._run_layers(hidden, frames, self.encoder.layers)
        return self.encoder.layer_norm(hidden), frames

    # ----------------------------------------------------------------- embeddings

    def forward(
        self,
        mel: torch.Tensor,
        lengths: torch.Tensor | None = None,
        utterance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mel windows ``[N, 80, T]`` (+ ``lengths [N]``, default all T) -> ``[U, latent_dim]``.

        ``utterance [N]`` says which utterance each window belongs to (default: one each).
        """
        if lengths is None:
            lengths = torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.long)
        hidden, frames = self.encode_lower(mel, lengths)
        pooled = self.forward_upper(hidden, frames)
        if utterance is not None:
            pooled = pool_frames(pooled.unsqueeze(1), torch.ones_like(frames), utterance.to(pooled.device))
        return self.projection(pooled)

    def windows_of(self, waveform_16k: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Unpadded log-mel windows of one waveform, with the configured window and overlap."""
        mel = audio.log_mel(waveform_16k)
        return audio.split_windows(mel, self.config.window_frames, self.config.overlap_frames)

    @torch.no_grad()
    def encode_waveforms(self, waveforms: list[np.ndarray], max_batch: int = 8,
                         keep_frames: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """``[U, latent_dim]`` for U 16 kHz mono waveforms; windows batched by similar length.

        With ``keep_frames`` also each utterance's encoder frames before pooling, its windows'
        real frames in order (``[sum of frames, D]``, float32, CPU): what a frame-level
        dictation head reads, from the same single pass.
        """
        windows, owners = [], []
        for index, waveform in enumerate(waveforms):
            for window, _ in self.windows_of(waveform):
                windows.append(window)
                owners.append(index)
        device = next(self.parameters()).device
        pooled = torch.empty(len(windows), self.encoder.config.d_model)
        kept: list[torch.Tensor | None] = [None] * len(windows)
        for chunk in length_buckets([w.shape[-1] for w in windows], max_batch):
            mel, lengths = collate_windows([windows[i] for i in chunk])
            hidden, frames = self.encode_lower(mel.to(device), lengths.to(device))
            top = self.upper_frames(hidden, frames)
            pooled[chunk] = pool_frames(top, frames).float().cpu()
            if keep_frames:
                for j, i in enumerate(chunk):
                    kept[i] = top[j, : int(frames[j])].float().cpu()
        per_utterance = pool_frames(pooled.unsqueeze(1), torch.ones(len(windows), dtype=torch.long), torch.tensor(owners))
        weight = next(self.projection.parameters())
        emb = self.projection(per_utterance.to(weight.device, weight.dtype)).float().cpu()
        if not keep_frames:
            return emb, None
        per = [torch.cat([kept[i] for i, o in enumerate(owners) if o == u]) for u in range(len(waveforms))]
        return emb, per

    def embed_waveforms(self, waveforms: list[np.ndarray], max_batch: int = 8) -> torch.Tensor:
        """``[U, latent_dim]`` for U 16 kHz mono waveforms; windows batched by similar length."""
        return self.encode_waveforms(waveforms, max_batch)[0]

    def embed_audio(self, waveform_16k: np.ndarray) -> torch.Tensor:
        """``[latent_dim]`` embedding of one 16 kHz mono waveform (any length), unnormalised."""
        was_training = self.training
        self.eval()
        try:
            return self.embed_waveforms([waveform_16k])[0]
        finally:
            self.train(was_training)
