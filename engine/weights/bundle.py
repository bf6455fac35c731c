"""Model bundles: a folder with ``bundle.json`` + one ``<group>.safetensors`` per tensor group, no pickles.

A bundle holds only what training produced (CT encoder, tuned Whisper layers, heads, projections,
prompt embeddings); frozen backbones come from installed packages and are named, with a hash,
in the manifest (docs/design.md §2).

Manifest (``bundle.json``, schema :data:`BUNDLE_SCHEMA`); "?" marks optional sections, whose
listed sub-fields are required when the section is present::

    schema: int                         # = BUNDLE_SCHEMA
    name?: str
    labels: [str]                       # finding names, CT-RATE spelling and order
    preprocess: {...}                   # engine.preprocess.PreprocessSpec as a dict
    ct_encoder: {...}                   # engine.models.ct.CTEncoderConfig as a dict
    speech?: {backbone: str,            # e.g. "whisper-base" (engine.weights.whisper resolves it)
              backbone_sha256: str,     # sha256 of the converted encoder it was trained with
              trainable_layers: int, window_s: number, overlap_s: number, pooling: str,
              config?: {...}}           # engine.models.speech.SpeechStudentConfig as a dict
    text?: {backbone: str, frozen: bool, pooling: str, config?: {...}}   # TextTowerConfig
    space: {dim: int, logit_scale: number}   # logit_scale = the multiplier of cosines (exp of the log param)
    prompts?: {kind: "text"|"spoken", texts: [str], group: str}   # group's tensor "embeddings" [n, dim]
    thresholds?: {method: str, values: {label: number}, auroc?: {label: number in [0, 1]}}
    dictation_head?: {labels: [str], classes: [str], group: str}   # classes: 4 mention states (3 before)
    dictation_reader?: {choice: "speech"|"cascade", why: str, validation?: {...},
                        lexicon: {...}}   # engine.mention_rules.RuleLexicon as a dict
    provenance: {...}                   # data, seeds, commit, timings (free-form)
    evaluation?: {...}                  # the summary table (free-form)
    files: {"<group>.safetensors": {sha256: hex, bytes: int}}   # written by save_bundle

At least one of ``speech`` / ``text`` is present. Groups are conventionally ``ct_encoder``,
``speech_head``, ``text_head``, ``dictation_head``, ``prompts``.

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
import re
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

BUNDLE_SCHEMA = 1
MANIFEST_NAME = "bundle.json"
TENSOR_SUFFIX = ".safetensors"
#: Files that may hold pickles: never loaded, and refused inside a bundle.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
PROMPT_KINDS = ("text", "spoken")

_GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NUMBER = (int, float)

# (dotted field, accepted types, required). A sub-field is required only when its section exists.
_FIELDS: tuple[tuple[str, type | tuple[type, ...], bool], ...] = (
    ("schema", int, True),
    ("name", str, False),
    ("labels", list, True),
    ("preprocess", dict, True),
    ("ct_encoder", dict, True),
    ("speech", dict, False),
    ("speech.backbone", str, True),
    ("speech.backbone_sha256", str, True),
    ("speech.trainable_layers", int, True),
    ("speech.window_s", _NUMBER, True),
    ("speech.overlap_s", _NUMBER, True),
    ("speech.pooling", str, True),
    ("speech.config", dict, False),
    ("text", dict, False),
    ("text.backbone", str, True),
    ("text.frozen", bool, True),
    ("text.pooling", str, True),
    ("text.config", dict, False),
    ("space", dict, True),
    ("space.dim", int, True),
    ("space.logit_scale", _NUMBER, True),
    ("prompts", dict, False),
    ("prompts.kind", str, True),
    ("prompts.texts", list, True),
    ("prompts.group", str, True),
    ("thresholds", dict, False),
    ("thresholds.method", str, True),
    ("thresholds.values", dict, True),
    ("dictation_head", dict, False),
    ("dictation_head.labels", list, True),
    ("dictation_head.classes", list, True),
    ("dictation_head.group", str, True),
    ("dictation_reader", dict, False),
    ("dictation_reader.choice", str, True),
    ("dictation_reader.lexicon", dict, True),
    ("provenance", dict, True),
    ("evaluation", dict, False),
    ("files", dict, True),
)


def _type_name(types: type | tuple[type, ...]) -> str:
    if types == _NUMBER:
        return "a number"
    return {int: "an integer", str: "a string", bool: "true/false", list: "a list", dict: "an object"}[types]


def _is_type(value: Any, types: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and types is not bool:
        return False  # JSON true is not a number here
    return isinstance(value, types)


def validate_manifest(manifest: Any, where: str | Path = MANIFEST_NAME) -> None:
    """Raise :class:`BundleError` (one line) unless ``manifest`` follows the schema in this module's docstring."""
    if not isinstance(manifest, dict):
        raise BundleError("bundle.json must hold a JSON object", where)
    if "schema" not in manifest:
        raise BundleError("missing required manifest field 'schema'", where)
    schema = manifest["schema"]
    if not _is_type(schema, int) or schema != BUNDLE_SCHEMA:
        raise BundleError(
            f"bundle schema version {schema!r} is not supported (this engine reads schema {BUNDLE_SCHEMA})",
            where,
        )
    for dotted, types, required in _FIELDS:
        *parents, leaf = dotted.split(".")
        section: Any = manifest
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if not isinstance(section, dict):
            continue  # optional parent absent (a required parent was reported earlier)
        if leaf not in section:
            if required:
                raise BundleError(f"missing required manifest field '{dotted}'", where)
            continue
        if not _is_type(section[leaf], types):
            raise BundleError(
                f"manifest field '{dotted}' must be {_type_name(types)}, got {type(section[leaf]).__name__}",
                where,
            )
    _validate_values(manifest, where)


def _validate_values(m: dict[str, Any], where: str | Path) -> None:
    if "speech" not in m and "text" not in m:
        raise BundleError("manifest has neither a 'speech' nor a 'text' section", where)
    if not m["labels"] or not all(isinstance(x, str) for x in m["labels"]):
        raise BundleError("manifest field 'labels' must be a non-empty list of strings", where)
    if m["space"]["dim"] < 1 or not m["space"]["logit_scale"] > 0:
        raise BundleError(f"manifest field 'space' is out of range: {m['space']}", where)
    if "prompts" in m and m["prompts"]["kind"] not in PROMPT_KINDS:
        raise BundleError(
            f"manifest field 'prompts.kind' must be one of {PROMPT_KINDS}, got {m['prompts']['kind']!r}",
            where,
        )
    if "thresholds" in m:
        values = m["thresholds"]["values"].values()
        if not all(_is_type(v, _NUMBER) for v in values):
            raise BundleError("manifest 'thresholds.values' must map labels to numbers", where)
        unknown = sorted(set(m["thresholds"]["values"]) - set(m["labels"]))
        if unknown:
            raise BundleError(
                f"manifest 'thresholds.values' names unknown label(s): {', '.join(unknown)}", where
            )
        auroc = m["thresholds"].get("auroc", {})
        if not isinstance(auroc, dict) or not all(_is_type(v, _NUMBER) and 0 <= v <= 1 for v in auroc.values()):
            raise BundleError("manifest 'thresholds.auroc' must map labels to numbers in [0, 1]", where)
        unknown = sorted(set(auroc) - set(m["labels"]))
        if unknown:
            raise BundleError(f"manifest 'thresholds.auroc' names unknown label(s): {', '.join(unknown)}", where)
    if "speech" in m and not _SHA256_RE.match(m["speech"]["backbone_sha256"]):
        raise BundleError("manifest field 'speech.backbone_sha256' is not a sha256 hex digest", where)
    for name, entry in m["files"].items():
        if (
            Path(name).name != name
            or not name.endswith(TENSOR_SUFFIX)
            or not _GROUP_RE.match(name[: -len(TENSOR_SUFFIX)])
        ):
            raise BundleError(
                f"manifest 'files' entry {name!r} is not a plain <group>{TENSOR_SUFFIX} name", where
            )
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _is_type(entry.get("bytes"), int)
        ):
            raise BundleError(
                f"manifest 'files' entry {name!r} needs 'sha256' (string) and 'bytes' (integer)", where
            )
    for section in ("prompts", "dictation_head"):
        if section in m and f"{m[section]['group']}{TENSOR_SUFFIX}" not in m["files"]:
            raise BundleError(
                f"manifest '{section}.group' {m[section]['group']!r} has no file in 'files'", where
            )


def speech_entry(config: dict[str, Any], backbone_sha256: str) -> dict[str, Any]:
    """The manifest's ``speech`` section from ``SpeechStudentConfig.to_dict()`` and the backbone's sha256."""
    keys = ("backbone", "trainable_layers", "window_s", "overlap_s", "pooling")
    missing = [k for k in keys if k not in config]
    if missing:
        raise BundleError(f"speech config lacks {', '.join(missing)}")
    return {**{k: config[k] for k in keys}, "backbone_sha256": backbone_sha256, "config": dict(config)}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_hash(manifest: dict[str, Any]) -> str:
    """Stable content hash of a bundle: sha256 of its canonical manifest JSON.

    The manifest lists every tensor file's sha256, so this covers the tensors too; it does not
    depend on key order, indentation or the folder's location.
    """
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
    manifest: dict[str, Any]
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
        return list(self.manifest["labels"])

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
    manifest: dict[str, Any], where: Path, resolve: Callable[[str], Any] | None = None
) -> tuple[Any, list[str]]:
    """Resolve the manifest's speech backbone; BundleError if it cannot be, warnings on a sha256 mismatch.

    ``resolve(name)`` returns an object with a ``sha256`` attribute (``engine.weights.whisper.
    WhisperBackbone``) or raises a SpeechCTError; the default is ``resolve_whisper_backbone``.
    Returns (the resolved backbone or None without a speech section, warning messages).
    """
    speech = manifest.get("speech")
    if speech is None:
        return None, []
    name = speech["backbone"]
    try:
        backbone = (resolve or _default_backbone_resolver)(name)
    except (SpeechCTError, ImportError, OSError) as exc:
        reason = exc.message if isinstance(exc, SpeechCTError) else str(exc)
        raise BundleError(f"speech backbone {name!r} is not available: {reason}", where) from exc
    found = getattr(backbone, "sha256", None)
    if found != speech["backbone_sha256"]:
        msg = (
            f"{where}: speech backbone {name!r} differs from the one this bundle was trained with "
            f"(sha256 {str(found)[:12]}… vs {speech['backbone_sha256'][:12]}…); results may differ slightly"
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
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"not valid UTF-8 JSON: {exc.reason}", manifest_path) from exc
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", manifest_path
        ) from exc
    validate_manifest(manifest, manifest_path)

    for name, entry in manifest["files"].items():
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
        if path.suffix == TENSOR_SUFFIX and path.name not in manifest["files"]:
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
    groups = tuple(name[: -len(TENSOR_SUFFIX)] for name in manifest["files"])
    return Bundle(
        path=folder,
        manifest=manifest,
        hash=manifest_hash(manifest),
        tensors=_LazyGroups(folder, groups),
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
) -> Path:
    """Write a bundle: one ``<group>.safetensors`` per entry of ``tensors``, then ``bundle.json`` last.

    Everything is written into a temporary sibling folder which is renamed into place at the end,
    so a crash never leaves a half-written bundle under ``folder``. ``manifest`` gets ``schema``
    (if absent) and ``files`` (always recomputed) and must then validate. Tensors are saved
    exactly (dtype, shape, values; bf16/fp16 included), detached and moved to CPU.
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
