"""An encoder-only copy of the packaged Whisper-base ``model.bin`` for the app bundle.

The app only ever runs Whisper's encoder (the speech student); the decoder (two thirds of the
145 MB file) is for transcription, which the app does not do. This copies the file's header and
every ``encoder/*`` variable record byte for byte, drops the decoder's records and any alias that
points into it, and writes the count that now holds. The layout is the one ``engine.weights.ct2``
documents and reads. The result is verified by converting both files with the engine and comparing
every encoder tensor (:func:`verify_same_encoder`). It is not a complete CTranslate2 model any more
(CTranslate2 itself cannot load it), which is why only the bundle carries it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path

_DTYPE_SIZES = (4, 1, 2, 4, 2, 2)  # float32, int8, int16, int32, float16, bfloat16 (engine.weights.ct2)


def _is_encoder(name: str) -> bool:
    return name.startswith("encoder/")


class _Stream:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ValueError(f"model.bin is truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + count]
        self.pos += count
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> bytes:
        """A length-prefixed, NUL-terminated string, returned with its prefix (ready to copy)."""
        (length,) = self.unpack("H")
        return struct.pack("<H", length) + self.take(length)


def trim_model(parts: Sequence[Path], keep: Callable[[str], bool] = _is_encoder) -> tuple[bytes, dict]:
    """The bytes of a ``model.bin`` holding only the variables ``keep`` accepts, and counts."""
    stream = _Stream(b"".join(Path(p).read_bytes() for p in parts))
    (version,) = stream.unpack("I")
    header = struct.pack("<I", version) + stream.string() + stream.take(4)  # spec name, revision
    (count,) = stream.unpack("I")
    kept, names = [], set()
    for _ in range(count):
        start = stream.pos
        raw_name = stream.string()
        name = raw_name[2:-1].decode("utf-8")
        (rank,) = stream.unpack("B")
        stream.take(4 * rank)
        dtype_id, n_bytes = stream.unpack("BI")
        if dtype_id >= len(_DTYPE_SIZES):
            raise ValueError(f"variable {name!r} has unknown dtype id {dtype_id}")
        stream.take(n_bytes)
        if keep(name):
            kept.append(stream.data[start:stream.pos])
            names.add(name)
    (n_aliases,) = stream.unpack("I")
    aliases = []
    for _ in range(n_aliases):
        alias, target = stream.string(), stream.string()
        if target[2:-1].decode("utf-8") in names:
            aliases.append(alias + target)
    if stream.pos != len(stream.data):
        raise ValueError(f"model.bin has {len(stream.data) - stream.pos} trailing bytes")
    body = header + struct.pack("<I", len(kept)) + b"".join(kept) + struct.pack("<I", len(aliases)) + b"".join(aliases)
    return body, {"variables": count, "kept": len(kept), "aliases": n_aliases, "kept_aliases": len(aliases),
                  "bytes_in": len(stream.data), "bytes_out": len(body)}


def verify_same_encoder(original_parts: Sequence[Path], trimmed: Path) -> int:
    """Convert both with the engine; raise ValueError unless every encoder tensor is identical."""
    import numpy as np

    from engine.weights.whisper import ct2_encoder_tensors

    want, want_config = ct2_encoder_tensors(list(original_parts))
    got, got_config = ct2_encoder_tensors([trimmed])
    if want_config != got_config or want.keys() != got.keys():
        raise ValueError("the trimmed Whisper model does not describe the same encoder")
    for key, array in want.items():
        if array.dtype != got[key].dtype or not np.array_equal(array, got[key]):
            raise ValueError(f"the trimmed Whisper model differs in {key}")
    return len(want)


def write_trimmed(original_parts: Sequence[Path], out_dir: Path) -> tuple[Path, Path, dict]:
    """``out_dir/model.bin.part1`` (the encoder-only model) and an empty ``model.bin.part2``, so that
    ``engine.weights.whisper.packaged_ct2_parts`` finds the two parts it expects; verified."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body, counts = trim_model(original_parts)
    part1, part2 = out_dir / "model.bin.part1", out_dir / "model.bin.part2"
    part1.write_bytes(body)
    part2.write_bytes(b"")
    counts["tensors_verified"] = verify_same_encoder(original_parts, part1)
    return part1, part2, counts
