"""A content-addressed cache of frozen work, so later epochs and later stages never recompute it.

What is cached (``<data>/cache/<kind>/<key[:2]>/<key>.npy``, float16 unless noted):

- ``ct``: prepared CT volumes at a preprocessing spec (``engine.preprocess.prepare_ct``),
  key = sha256(volume file bytes, metadata overrides, spec JSON);
- ``text_features``: the frozen text backbone's pooled features of a text, key = sha256(text,
  backbone weights hash, tower config) (float32: the teacher's projection trains on them);
- ``text_lower``: what enters a text tower's tuned top layers, ``[tokens, hidden]`` per text (real
  tokens only), key = sha256(text, backbone hash, tower config, first tuned layer);
- ``teacher_ct`` / ``teacher_text``: the frozen teacher's CT and text embeddings, key = the
  input's key + the hash of the teacher weights that made them;
- ``whisper_lower``: the frozen lower Whisper layers' outputs of one dictation, one array
  ``[sum of window frames, D]`` plus its window lengths, key = sha256(WAV bytes, backbone
  sha256, trainable layer split, window/overlap).

Every key includes the hash of the weights and the preprocessing that produced the entry, so a
changed teacher or spec simply misses: stale entries are never read (they can be deleted with
the folder). Writes are atomic (temporary file + ``os.replace``), so an interrupted run never
leaves a truncated entry behind and concurrent ranks writing the same entry are harmless.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import atomic_write


def sha256_bytes(*parts: bytes | str) -> str:
    """sha256 over length-prefixed parts (so ``("ab", "c")`` and ``("a", "bc")`` differ)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


def state_hash(state: dict[str, torch.Tensor] | torch.nn.Module) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (order-independent)."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def json_hash(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


class FrozenCache:
    """Arrays stored under ``root/<kind>/<key[:2]>/<key>.npy`` (``.npz`` for several arrays)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str, suffix: str = ".npy") -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _atomic_save(self, path: Path, writer) -> None:
        with atomic_write(path) as fh:
            writer(fh)

    def get(self, kind: str, key: str) -> np.ndarray | None:
        path = self.path(kind, key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # unreadable entry: recompute it
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, kind: str, key: str, array: np.ndarray, dtype=np.float16) -> np.ndarray:
        array = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        self._atomic_save(self.path(kind, key), lambda fh: np.save(fh, array, allow_pickle=False))
        return array

    def get_many(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(kind, key, ".npz")
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                value = {k: data[k] for k in data.files}
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put_many(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._atomic_save(self.path(kind, key, ".npz"), lambda fh: np.savez(fh, **arrays))
        return arrays

    def get_or_compute(self, kind: str, key: str, compute, dtype=np.float16) -> np.ndarray:
        """The cached array, or ``compute()`` stored (as ``dtype``) and returned."""
        value = self.get(kind, key)
        if value is None:
            value = self.put(kind, key, compute(), dtype=dtype)
        return value


# --------------------------------------------------------------------------- keys


def ct_key(volume_path: str | Path, overrides: dict[str, Any] | None, spec_json: str) -> str:
    """Key of a prepared volume: the file's bytes, the metadata overrides used to read it, the spec."""
    return sha256_bytes("ct-v1", file_sha256(volume_path), json.dumps(overrides or {}, sort_keys=True,
                                                                      default=str), spec_json)


def text_features_key(text: str, backbone_hash: str, tower_config: dict) -> str:
    return sha256_bytes("text-features-v1", text, backbone_hash, json.dumps(tower_config, sort_keys=True))


def text_lower_key(text: str, backbone_hash: str, tower_config: dict, first_tuned: int) -> str:
    return sha256_bytes("text-lower-v1", text, backbone_hash, json.dumps(tower_config, sort_keys=True), str(first_tuned))


def embedding_key(input_key: str, weights_hash: str, kind: str) -> str:
    """Key of a frozen model's embedding of a cached input (``kind`` names the model role)."""
    return sha256_bytes("embedding-v1", kind, input_key, weights_hash)


def whisper_lower_key(audio_path: str | Path, backbone_sha256: str, split: int, window_frames: int,
                      overlap_frames: int) -> str:
    return sha256_bytes("whisper-lower-v1", file_sha256(audio_path), backbone_sha256, str(split),
                        str(window_frames), str(overlap_frames))
