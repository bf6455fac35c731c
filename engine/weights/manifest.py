"""``bundle.json`` parsed once into a typed, validated, versioned :class:`BundleManifest`.

Every reader of a bundle's manifest (the model factory :mod:`engine.weights.factory`, the runtime,
``speechct bundle-info``, ``train.evaluate``) reads these typed sections; the raw dict is kept only for
the content hash and the free-form parts (provenance, evaluation). The schema is documented here once
(docs/design.md §2 points here).

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
    dictation_reader?: {choice: "speech"|"cascade"|"transcript", why: str, validation?: {...},
                        transcript_head?: {group, config} (the learned transcript reader),
                        lexicon: {...}}   # engine.mention_rules.RuleLexicon as a dict
    provenance: {...}                   # data, seeds, commit, timings (free-form)
    evaluation?: {...}                  # the summary table (free-form)
    files: {"<group>.safetensors": {sha256: hex, bytes: int}}   # written by save_bundle

At least one of ``speech`` / ``text`` is present. Groups are conventionally ``ct_encoder``,
``speech_head``, ``text_head``, ``dictation_head``, ``prompts``.

Versions read: schema 1, in every variant shipped so far: ``speech``/``text`` without ``config``
(the section's own fields then make the config), ``dictation_head`` without ``config`` or without
``n_classes`` in it (the class count comes from ``classes``: four mention states, or three in heads made
before "uncertain"), no ``dictation_reader`` (the speech reader decides), ``thresholds`` without ``auroc``
or without ``auroc_statistic`` (the point estimate, :data:`AUROC_STATISTICS`). A manifest of another
schema, or one that breaks a rule above, is a one-line :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import BundleError
from engine.labels import CLASS_SETS

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
    if isinstance(types, tuple):
        return "a number"  # the one tuple of types the schema uses: _NUMBER
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
    if "dictation_head" in m and tuple(m["dictation_head"]["classes"]) not in CLASS_SETS.values():
        raise BundleError(f"dictation head classes {list(m['dictation_head']['classes'])} are none the engine knows "
                          f"({' or '.join(str(list(c)) for c in CLASS_SETS.values())})", where)
    if "dictation_reader" in m and m["dictation_reader"]["choice"] not in DICTATION_READERS:
        raise BundleError(f"manifest field 'dictation_reader.choice' must be one of {DICTATION_READERS}, "
                          f"got {m['dictation_reader']['choice']!r}", where)
    if "dictation_reader" in m and m["dictation_reader"]["choice"] == "transcript":
        head = m["dictation_reader"].get("transcript_head")
        if not isinstance(head, dict) or not isinstance(head.get("group"), str) or not isinstance(head.get("config"), dict):
            raise BundleError("manifest field 'dictation_reader.transcript_head' must name the transcript reader's "
                              "group and config when the choice is 'transcript'", where)
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




def manifest_hash(manifest: dict[str, Any]) -> str:
    """Stable content hash of a bundle: sha256 of its canonical manifest JSON.

    The manifest lists every tensor file's sha256, so this covers the tensors too; it does not
    depend on key order, indentation or the folder's location.
    """
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()




#: Readers of a dictation (``dictation_reader.choice``): the speech-native head, the transcript read by the
#: rule lexicon (``cascade``), or the transcript read by the learned transcript reader (``transcript``: a
#: frame dictation head over the text tower's token states, ``dictation_reader.transcript_head``).
DICTATION_READERS = ("speech", "cascade", "transcript")

#: What a bundle's ``thresholds.auroc`` holds, named by ``thresholds.auroc_statistic``:
#: ``"ci_lower"``, each finding's lower bootstrap CI bound of its validation AUROC (what
#: ``train.export`` writes; ``auroc_point`` and ``auroc_ci`` beside it), or ``"point"``, the point
#: estimate (bundles exported before the gate moved to the bound name no statistic). The gate reads
#: ``auroc`` either way, so old bundles keep working, gated on the less cautious number.
AUROC_STATISTICS = {"ci_lower": "lower bound of the bootstrap CI", "point": "point estimate"}


def auroc_statistic(thresholds: dict | None) -> str | None:
    """Which :data:`AUROC_STATISTICS` key a bundle's ``thresholds`` section's ``auroc`` holds; None
    when it carries no AUROC. A section that names no statistic is an older bundle's: ``"point"``."""
    if not thresholds or not thresholds.get("auroc"):
        return None
    statistic = thresholds.get("auroc_statistic", "point")
    if statistic not in AUROC_STATISTICS:
        raise ValueError(f"thresholds.auroc_statistic must be one of {', '.join(AUROC_STATISTICS)}, got {statistic!r}")
    return statistic


@dataclass(frozen=True)
class SpeechSection:
    backbone: str
    backbone_sha256: str
    trainable_layers: int
    window_s: float
    overlap_s: float
    pooling: str
    config: dict[str, Any] | None

    def student_config(self, dim: int) -> dict[str, Any]:
        """The ``SpeechStudentConfig`` dict: ``config`` when given, else the section's own fields."""
        if self.config is not None:
            return dict(self.config)
        return {"latent_dim": dim, "backbone": self.backbone, "trainable_layers": self.trainable_layers,
                "window_s": self.window_s, "overlap_s": self.overlap_s, "pooling": self.pooling}


@dataclass(frozen=True)
class TextSection:
    backbone: str
    frozen: bool
    pooling: str
    config: dict[str, Any] | None

    def tower_config(self, dim: int) -> dict[str, Any]:
        """The ``TextTowerConfig`` dict: ``config`` when given, else the section's own fields."""
        data = dict(self.config or {"backbone": self.backbone, "pooling": self.pooling, "frozen": self.frozen})
        data.setdefault("latent_dim", dim)
        return data


@dataclass(frozen=True)
class PromptsSection:
    kind: str
    texts: list[str]
    group: str


@dataclass(frozen=True)
class ThresholdsSection:
    method: str
    values: dict[str, float]
    #: per-label validation AUROC the reliability gate reads (empty when the bundle has none)
    auroc: dict[str, float]
    #: as written (None: an older bundle's point estimate); :func:`auroc_statistic` interprets it
    auroc_statistic: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class DictationHeadSection:
    labels: list[str]
    classes: tuple[str, ...]
    group: str
    config: dict[str, Any] | None

    @property
    def reads_frames(self) -> bool:
        """Whether the head reads the speech encoder's frames (``config.kind == "frames"``)."""
        return (self.config or {}).get("kind", "embedding") == "frames"

    def head_config(self, dim: int) -> dict[str, Any]:
        """The head config dict; heads shipped before the fourth mention state do not name n_classes."""
        data = dict(self.config or {"dim": dim, "n_labels": len(self.labels)})
        data.setdefault("n_classes", len(self.classes))
        return data


@dataclass(frozen=True)
class DictationReaderSection:
    choice: str
    why: str | None
    validation: dict[str, Any] | None
    lexicon: dict[str, Any]
    #: ``{"group", "config"}`` of the learned transcript reader's head, when the bundle carries one
    transcript_head: dict[str, Any] | None = None


@dataclass(frozen=True)
class BundleManifest:
    """The typed ``bundle.json``; ``raw`` is the dict as read (hashed, and shown by ``bundle-info``)."""

    schema: int
    name: str | None
    labels: tuple[str, ...]
    preprocess: dict[str, Any]
    ct_encoder: dict[str, Any]
    space_dim: int
    logit_scale: float
    provenance: dict[str, Any]
    files: dict[str, dict[str, Any]]
    speech: SpeechSection | None = None
    text: TextSection | None = None
    prompts: PromptsSection | None = None
    thresholds: ThresholdsSection | None = None
    dictation_head: DictationHeadSection | None = None
    dictation_reader: DictationReaderSection | None = None
    evaluation: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: Any, where: str | Path = MANIFEST_NAME) -> BundleManifest:
        """Validate ``raw`` (the JSON object of ``bundle.json``) and type it; BundleError naming ``where``."""
        validate_manifest(raw, where)
        m = raw
        speech = text = prompts = thresholds = head = reader = None
        if "speech" in m:
            s = m["speech"]
            speech = SpeechSection(s["backbone"], s["backbone_sha256"], s["trainable_layers"], float(s["window_s"]),
                                   float(s["overlap_s"]), s["pooling"], s.get("config"))
        if "text" in m:
            t = m["text"]
            text = TextSection(t["backbone"], t["frozen"], t["pooling"], t.get("config"))
        if "prompts" in m:
            p = m["prompts"]
            prompts = PromptsSection(p["kind"], list(p["texts"]), p["group"])
        if "thresholds" in m:
            t = m["thresholds"]
            thresholds = ThresholdsSection(t["method"], {k: float(v) for k, v in t["values"].items()},
                                           {k: float(v) for k, v in (t.get("auroc") or {}).items()},
                                           t.get("auroc_statistic"), t)
        if "dictation_head" in m:
            d = m["dictation_head"]
            head = DictationHeadSection(list(d["labels"]), tuple(d["classes"]), d["group"], d.get("config"))
        if "dictation_reader" in m:
            r = m["dictation_reader"]
            reader = DictationReaderSection(r["choice"], r.get("why"), r.get("validation"), r["lexicon"],
                                            r.get("transcript_head"))
        return cls(schema=m["schema"], name=m.get("name"), labels=tuple(m["labels"]), preprocess=m["preprocess"],
                   ct_encoder=m["ct_encoder"], space_dim=m["space"]["dim"], logit_scale=float(m["space"]["logit_scale"]),
                   provenance=m["provenance"], files=m["files"], speech=speech, text=text, prompts=prompts,
                   thresholds=thresholds, dictation_head=head, dictation_reader=reader, evaluation=m.get("evaluation"),
                   raw=m)

    @classmethod
    def read(cls, path: str | Path) -> BundleManifest:
        """Read and parse a ``bundle.json`` file (BundleError when it is not UTF-8 JSON or not valid)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise BundleError(f"not valid UTF-8 JSON: {exc.reason}", path) from exc
        except json.JSONDecodeError as exc:
            raise BundleError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path) from exc
        return cls.parse(raw, path)

    @property
    def hash(self) -> str:
        return manifest_hash(self.raw)

    @property
    def groups(self) -> tuple[str, ...]:
        """Tensor groups, in ``files`` order."""
        return tuple(name[: -len(TENSOR_SUFFIX)] for name in self.files)

    @property
    def reader_choice(self) -> str:
        """Which reader decides what a dictation states (``speech`` when the bundle does not say)."""
        return self.dictation_reader.choice if self.dictation_reader is not None else "speech"

    @property
    def auroc_statistic(self) -> str | None:
        """:func:`auroc_statistic` of the thresholds (ValueError on an unknown name)."""
        return auroc_statistic(None if self.thresholds is None else self.thresholds.raw)
