"""Model bundles: a folder with ``bundle.json`` + one ``<group>.safetensors`` per tensor group, no pickles.

A bundle holds only what training produced (CT encoder, tuned Whisper layers, heads, projections,
prompt embeddings); frozen backbones come from installed packages and are named, with a hash,
in the manifest (docs/design.md §2).

The manifest (``bundle.json``) and its schema: :mod:`engine.weights.manifest`.

Loading checks, in this order, each failing with its own one-line :class:`BundleError`: folder
exists; ``bundle.json`` exists, is JSON, has a supported schema and every required field with the
right type; every file in ``files`` exists with its byte size and sha256 (``check_hashes``); no
other ``.safetensors`` or pickle file lies in the folder; the speech backbone resolves (a
different sha256 of the same backbone is accepted with a :class:`SpeechCTWarning`). Tensors a
group holds beyond what a module expects are refused by :meth:`Bundle.load_into`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import BundleError, SpeechCTError, SpeechCTWarning
from engine.weights.manifest import (
    _GROUP_RE,
    BUNDLE_SCHEMA,
    MANIFEST_NAME,
    PICKLE_SUFFIXES,
    TENSOR_SUFFIX,
    BundleManifest,
    validate_manifest,
)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _LazyGroups(Mapping):
    """``bundle.tensors[group]`` -> ``{name: Tensor}`` on CPU, read from disk on first access, then cached."""

    def __init__(self, folder: Path, groups: tuple[str, ...]):
        self._folder = folder
        self._groups = groups
        self._cache: dict[str, dict[str, Tensor]] = {}

    def __getitem__(self, group: str) -> dict[str, Tensor]:
        if group not in self._groups:
            raise KeyError(group)
        if group not in self._cache:
            self._cache[group] = read_group(self._folder, group)
        return self._cache[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


def read_group(folder: Path, group: str, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """All tensors of ``<folder>/<group>.safetensors`` (fresh copies), BundleError when unreadable."""
    from safetensors.torch import load_file

    path = Path(folder) / f"{group}{TENSOR_SUFFIX}"
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"cannot read tensors: {str(exc).splitlines()[0]}", path) from exc


def tensor_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors header, without reading tensor data."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError(f"implausible header size {size}")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read safetensors header: {exc}", path) from exc
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


@dataclass
class Bundle:
    """A loaded (validated) bundle. ``tensors[group]`` loads lazily; ``hash`` identifies the content."""

    path: Path
    manifest: BundleManifest
    hash: str
    tensors: Mapping[str, dict[str, Tensor]]
    warnings: list[str] = field(default_factory=list)
    #: The resolved speech backbone (``WhisperBackbone``), None when not checked or no speech section.
    speech_backbone: Any = None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def load_group(self, group: str, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Fresh tensors of one group on ``device`` (not cached)."""
        if group not in self.groups:
            raise BundleError(
                f"bundle has no tensor group {group!r} (groups: {', '.join(self.groups)})", self.path
            )
        return read_group(self.path, group, device)

    def load_into(self, module: nn.Module, group: str, *, prefix: str = "") -> None:
        """Load a group into ``module`` strictly: BundleError on missing or unexpected tensors or shapes.

        ``prefix`` selects the group's tensors whose names start with it (stripped); tensors of the
        group outside the prefix are ignored, those inside it must match the module exactly.
        """
        if group not in self.groups:
            raise BundleError(
                f"bundle has no tensor group {group!r} (groups: {', '.join(self.groups)})", self.path
            )
        state = {k[len(prefix) :]: v for k, v in self.tensors[group].items() if k.startswith(prefix)}
        own = module.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        where = self.path / f"{group}{TENSOR_SUFFIX}"
        if unexpected:
            raise BundleError(
                f"unexpected extra tensors for {type(module).__name__}: {_few(unexpected)}", where
            )
        if missing:
            raise BundleError(f"tensors missing for {type(module).__name__}: {_few(missing)}", where)
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise BundleError(
                    f"tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}",
                    where,
                )
        module.load_state_dict(state, strict=True)

    def parameter_counts(self) -> dict[str, int]:
        """Number of scalars per group, from the safetensors headers (no tensor data read)."""
        counts = {}
        for group in self.groups:
            shapes = tensor_shapes(self.path / f"{group}{TENSOR_SUFFIX}")
            counts[group] = sum(_numel(shape) for _, shape in shapes.values())
        return counts


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _few(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def _default_backbone_resolver(name: str) -> Any:
    from engine.weights.whisper import resolve_whisper_backbone

    return resolve_whisper_backbone(name)


def check_speech_backbone(
    manifest: BundleManifest, where: Path, resolve: Callable[[str], Any] | None = None
) -> tuple[Any, list[str]]:
    """Resolve the manifest's speech backbone; BundleError if it cannot be, warnings on a sha256 mismatch.

    ``resolve(name)`` returns an object with a ``sha256`` attribute (``engine.weights.whisper.
    WhisperBackbone``) or raises a SpeechCTError; the default is ``resolve_whisper_backbone``.
    Returns (the resolved backbone or None without a speech section, warning messages).
    """
    speech = manifest.speech
    if speech is None:
        return None, []
    name = speech.backbone
    try:
        backbone = (resolve or _default_backbone_resolver)(name)
    except (SpeechCTError, ImportError, OSError) as exc:
        reason = exc.message if isinstance(exc, SpeechCTError) else str(exc)
        raise BundleError(f"speech backbone {name!r} is not available: {reason}", where) from exc
    found = getattr(backbone, "sha256", None)
    if found != speech.backbone_sha256:
        msg = (
            f"{where}: speech backbone {name!r} differs from the one this bundle was trained with "
            f"(sha256 {str(found)[:12]}… vs {speech.backbone_sha256[:12]}…); results may differ slightly"
        )
        warnings.warn(msg, SpeechCTWarning, stacklevel=3)
        return backbone, [msg]
    return backbone, []


def load_bundle(
    folder: str | Path,
    *,
    check_hashes: bool = True,
    check_backbone: bool = True,
    resolve_backbone: Callable[[str], Any] | None = None,
) -> Bundle:
    """Open and validate a bundle folder (see the module docstring for the checks and their order).

    ``check_hashes=False`` skips the sha256 of the tensor files (sizes are still checked) for a fast
    open of a trusted bundle; ``Bundle.hash`` is then the manifest's claim. ``check_backbone=False``
    skips resolving the speech backbone (e.g. ``bundle-info`` on a machine without it).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise BundleError("bundle folder does not exist", folder)
    if not folder.is_dir():
        raise BundleError("bundle path is not a folder", folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"no {MANIFEST_NAME} in bundle folder", folder)
    manifest = BundleManifest.read(manifest_path)

    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"file {name} listed in {MANIFEST_NAME} is missing", folder)
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"file size {size} bytes differs from {entry['bytes']} in {MANIFEST_NAME} (truncated or replaced)",
                path,
            )
        if check_hashes and file_sha256(path) != entry["sha256"]:
            raise BundleError(
                f"sha256 mismatch for {name}: the file is corrupt or was changed after the bundle was written",
                path,
            )
    for path in sorted(folder.iterdir()):
        if path.suffix == TENSOR_SUFFIX and path.name not in manifest.files:
            raise BundleError(
                f"unexpected extra tensors: {path.name} is not listed in {MANIFEST_NAME} 'files'", folder
            )
        if path.suffix in PICKLE_SUFFIXES:
            raise BundleError(
                f"pickle file {path.name} is not allowed in a bundle (safetensors only)", folder
            )

    backbone, found_warnings = (
        check_speech_backbone(manifest, manifest_path, resolve_backbone) if check_backbone else (None, [])
    )
    return Bundle(
        path=folder,
        manifest=manifest,
        hash=manifest.hash,
        tensors=_LazyGroups(folder, manifest.groups),
        warnings=found_warnings,
        speech_backbone=backbone,
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_bundle(
    folder: str | Path,
    *,
    manifest: dict[str, Any],
    tensors: dict[str, dict[str, Tensor]],
    overwrite: bool = False,
    documents: dict[str, str] | None = None,
) -> Path:
    """Write a bundle: one ``<group>.safetensors`` per entry of ``tensors``, then ``bundle.json`` last.

    Everything is written into a temporary sibling folder which is renamed into place at the end,
    so a crash never leaves a half-written bundle under ``folder``. ``manifest`` gets ``schema``
    (if absent) and ``files`` (always recomputed) and must then validate. Tensors are saved
    exactly (dtype, shape, values; bf16/fp16 included), detached and moved to CPU. ``documents``: text
    files written beside (e.g. the model card ``README.md``), not part of the manifest or its hash.
    Returns the bundle folder.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise BundleError("bundle folder already exists (pass overwrite=True to replace it)", folder)
    for group, group_tensors in tensors.items():
        if not _GROUP_RE.match(group):
            raise BundleError(f"tensor group name {group!r} must match {_GROUP_RE.pattern}", folder)
        for key, value in group_tensors.items():
            if not isinstance(value, Tensor):
                raise BundleError(
                    f"group {group!r} entry {key!r} is a {type(value).__name__}, not a tensor", folder
                )
    from safetensors.torch import save_file

    manifest = json.loads(json.dumps(manifest))  # a private, JSON-clean copy (fails early on non-JSON values)
    manifest.setdefault("schema", BUNDLE_SCHEMA)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        files = {}
        for group, group_tensors in tensors.items():
            # clone: safetensors refuses views sharing storage, and CPU copies must not alias live parameters
            cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in group_tensors.items()}
            path = staging / f"{group}{TENSOR_SUFFIX}"
            # one metadata key only: safetensors writes metadata in hash-map order, and several keys
            # would make identical content hash differently from run to run
            save_file(cpu, str(path), metadata={"format": "pt"})
            _fsync(path)
            files[path.name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        manifest["files"] = files
        validate_manifest(manifest, folder / MANIFEST_NAME)
        for doc_name, text in (documents or {}).items():
            if Path(doc_name).name != doc_name or Path(doc_name).suffix in (TENSOR_SUFFIX, *PICKLE_SUFFIXES):
                raise BundleError(f"document name {doc_name!r} is not a plain text file name", folder)
            (staging / doc_name).write_text(text, encoding="utf-8")
        manifest_path = staging / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync(manifest_path)
        if folder.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, trash / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays
        if isinstance(exc, SpeechCTError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":  # safetensors' own I/O error
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            elif "os error 28" in str(exc):
                reason = os.strerror(28)
            else:
                reason = " ".join(str(exc).split())[:200]
            raise BundleError(f"cannot write the bundle ({reason}); nothing was written", folder) from exc
        raise
    return folder
