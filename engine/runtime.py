"""``Engine``: the one object the CLI, the desktop app and scripts call to use a model bundle.

What it does: loads a bundle (default ``assets/models/default``, or ``$SPEECHCT_BUNDLE``), picks
the device (CUDA with bf16 — fp16 where bf16 is unsupported — autocast when present, else CPU;
logged once), and offers the public calls:

- ``encode_ct(volume) -> [D]``, ``encode_speech(waveform, sample_rate) -> [D]``,
  ``encode_text(text) -> [D]``: float32 numpy, unit L2 norm, in the bundle's shared space;
- ``encode_speech_frames(waveform, sample_rate) -> ([D], frames)``: the embedding and, from the same
  encoder pass, the frames a frame-level dictation head reads (``dictation_reads_frames``);
- ``rank(ct_emb)``, ``dictation(speech_emb, frames=None)``, ``discrepancies(findings, dictation)``
  (the ``engine.findings`` implementations with this bundle's prompts, thresholds and head;
  findings whose validation AUROC is below ``min_finding_auroc`` are not checked);
- ``similar(ct=, speech=, text=, k=, exclude_uids=)``: nearest studies of the library;
  ``index_study(volume, dictation=None)``: add a study (and its dictation) to it;
- ``analyze(volume, waveform, sample_rate) -> Analysis`` (all of the above, timed per stage).

CT embeddings are cached by study key (the series UID for DICOM, a sha256 of the voxels for
NIfTI or UID-less series; :func:`engine.study_identity.study_key`) + bundle hash: in memory (LRU)
and, unless ``cache_dir=False``, on disk under ``<platformdirs user cache>/speechct/embeddings``
(``$SPEECHCT_EMBEDDING_CACHE`` overrides the folder).

Threads: one GUI thread plus workers may call any method; model calls run one at a time under
an ``RLock`` (torch already uses every core inside one call; ``threads=`` sets that count).
No network: ``engine.offline`` sets ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` and ``USE_HUB_KERNELS=NO``
when ``engine`` is imported, before transformers can load, and every backbone is opened with
``local_files_only``.

``Analysis.to_json()`` is the ``speechct rank --json`` object without its ``inputs``; the schema
(``ANALYSIS_SCHEMA`` = 1) is written out once, in :mod:`engine.commands.rank`'s docstring, and a test
checks the output against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import AudioError, BundleError, SpeechCTError, SpeechCTWarning
from engine.findings import (
    RELIABLE_AUROC,
    DictationFinding,
    Discrepancy,
    FindingScore,
    dictation_findings,
    rank_findings,
    unchecked,
)
from engine.findings import discrepancies as find_discrepancies
from engine.labels import DICTATION_CLASSES
from engine.volume import Volume

log = logging.getLogger(__name__)

ANALYSIS_SCHEMA = 1
ENV_BUNDLE = "SPEECHCT_BUNDLE"
ENV_EMBEDDING_CACHE = "SPEECHCT_EMBEDDING_CACHE"
#: Repository-relative default bundle (the package sits next to ``assets/`` in a checkout).
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "models" / "default"
MEMORY_CACHE_SIZE = 256

_device_logged: set[str] = set()
_device_log_lock = threading.Lock()


class _SharedModels:
    """Models built from one bundle on one device, shared by every Engine of this process that uses
    them (a GUI and its scripts load the weights once), with the one lock their calls run under."""

    def __init__(self):
        self.lock = threading.RLock()
        self.models: dict[str, Any] = {}


_shared: dict[tuple[str, str], _SharedModels] = {}
_shared_lock = threading.Lock()


def _shared_models(bundle_hash: str, device: torch.device) -> _SharedModels:
    with _shared_lock:
        return _shared.setdefault((bundle_hash, str(device)), _SharedModels())


def release_models() -> None:
    """Forget the shared models: Engines created afterwards build their own; existing ones keep theirs
    (their memory is freed once those Engines are gone)."""
    with _shared_lock:
        _shared.clear()


def default_bundle_path() -> Path:
    """``$SPEECHCT_BUNDLE`` when set, else ``assets/models/default`` of this checkout."""
    env = os.environ.get(ENV_BUNDLE)
    return Path(env).expanduser() if env else DEFAULT_BUNDLE


def default_embedding_cache() -> Path:
    env = os.environ.get(ENV_EMBEDDING_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("speechct")) / "embeddings"


def choose_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU. Anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpeechCTError(f"device {device!r} was asked for but torch sees no CUDA device")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, fp16 on older ones, None (float32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _unit(vector: torch.Tensor | np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """``vector`` scaled to unit length; ``source`` (the input's path) is named when it cannot be."""
    v = np.asarray(vector.detach().float().cpu().numpy() if isinstance(vector, torch.Tensor) else vector,
                   dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise SpeechCTError("the encoder produced a zero or non-finite embedding", source)
    return v / norm


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


@dataclass
class Analysis:
    """The result of :meth:`Engine.analyze`; :meth:`to_json` follows the module docstring's schema."""

    bundle: dict[str, Any]
    device: str
    study: dict[str, Any]
    findings: list[FindingScore]
    dictation: list[DictationFinding] | None = None
    discrepancies: list[Discrepancy] | None = None
    unchecked: list[str] | None = None
    similar: list[dict[str, Any]] | None = None
    timings: dict[str, float | None] = field(default_factory=dict)  # ms per stage
    cached: dict[str, bool] = field(default_factory=dict)
    ct_embedding: np.ndarray | None = None
    speech_embedding: np.ndarray | None = None
    transcript: str | None = None  # the dictation's transcript when a transcript reader read it (not in the JSON)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ANALYSIS_SCHEMA,
            "bundle": dict(self.bundle),
            "device": self.device,
            "study": dict(self.study),
            "findings": [asdict(f) for f in self.findings],
            "dictation": None if self.dictation is None else [asdict(d) for d in self.dictation],
            "discrepancies": None if self.discrepancies is None else [asdict(d) for d in self.discrepancies],
            "unchecked": None if self.unchecked is None else list(self.unchecked),
            "similar": None if self.similar is None else [dict(s) for s in self.similar],
            "timings_ms": dict(self.timings),
            "cached": dict(self.cached),
        }


class _EmbeddingCache:
    """LRU in memory + ``.npy`` files on disk (atomic writes), keyed by (bundle hash, study key)."""

    def __init__(self, bundle_hash: str, folder: Path | None, size: int = MEMORY_CACHE_SIZE):
        self.bundle_hash = bundle_hash
        self.folder = None if folder is None else Path(folder) / bundle_hash[:16]
        self.size = size
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._write_failed = False

    def _file(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".npy")

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key].copy()
        path = self._file(key)
        if path is not None and path.is_file():
            try:
                vec = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                return None  # a damaged cache file is recomputed, never trusted
            self._remember(key, vec)
            return vec.copy()
        return None

    def put(self, key: str, vec: np.ndarray) -> None:
        self._remember(key, vec)
        path = self._file(key)
        if path is None:
            return
        from engine.atomic import atomic_write

        try:
            with atomic_write(path) as fh:  # never a half-written file left behind
                np.save(fh, vec, allow_pickle=False)
        except OSError as exc:  # a full or read-only cache folder costs speed, not correctness
            if not self._write_failed:  # said once per cache, not once per study
                self._write_failed = True
                warnings.warn(f"{path.parent}: embedding cache not written ({exc.strerror or exc}); "
                              "embeddings are recomputed next time", SpeechCTWarning, stacklevel=2)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    def _remember(self, key: str, vec: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = np.asarray(vec, dtype=np.float32).copy()
            self._memory.move_to_end(key)
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)


class Engine:
    """See the module docstring. Models load lazily, on first use, under the engine's lock; Engines of
    one process that use the same bundle on the same device share the built models and that lock.

    ``bundle``: a bundle folder (default :func:`default_bundle_path`). ``device``: ``"auto"``,
    ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... ``library``: a library folder for :meth:`similar`
    (default: ``engine.library``'s own default under platformdirs' user data dir, opened on first
    use). ``threads``: torch intra-op threads (None leaves torch's choice; process-wide).
    ``cache_dir``: the on-disk CT embedding cache (None = default, False = memory only).
    ``check_hashes``: verify every bundle file's sha256 on load.
    """

    def __init__(
        self,
        bundle: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        library: str | Path | None = None,
        threads: int | None = None,
        cache_dir: str | Path | bool | None = None,
        check_hashes: bool = True,
        min_finding_auroc: float = RELIABLE_AUROC,
    ):
        """``min_finding_auroc``: findings whose validation AUROC (from the bundle) is below it are
        not checked against the dictation (0 checks every finding)."""
        from engine.library import check_library_location
        from engine.weights.bundle import load_bundle

        check_library_location(library)  # before anything slow: a URL is refused at once
        started = time.perf_counter()
        if threads is not None:
            if threads < 1:
                raise SpeechCTError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.bundle_path = Path(bundle).expanduser() if bundle is not None else default_bundle_path()
        if not self.bundle_path.exists() and bundle is None:
            raise BundleError(
                f"no model bundle at the default location (set ${ENV_BUNDLE} or pass --bundle DIR)",
                self.bundle_path,
            )
        self.bundle = load_bundle(self.bundle_path, check_hashes=check_hashes)
        self.min_finding_auroc = float(min_finding_auroc)
        self.device = choose_device(device)
        self.amp_dtype = autocast_dtype(self.device)
        with _device_log_lock:
            if str(self.device) not in _device_logged:
                _device_logged.add(str(self.device))
                extra = f" with {str(self.amp_dtype).replace('torch.', '')} autocast" if self.amp_dtype else ""
                log.info("SpeechCT engine runs on %s%s", self.device, extra)
        self.dim = int(self.bundle.manifest.space_dim)
        self.logit_scale = float(self.bundle.manifest.logit_scale)
        self.labels = tuple(self.bundle.labels)
        shared = _shared_models(self.bundle.hash, self.device)
        self._lock = shared.lock  # one lock per (bundle, device): shared models run one call at a time
        self._models = shared.models
        self.load_timings_ms: dict[str, float] = {"bundle": _ms(time.perf_counter() - started)}
        if cache_dir is False:
            folder = None
        elif cache_dir is None or cache_dir is True:
            folder = default_embedding_cache()
        else:
            folder = Path(cache_dir).expanduser()
        self._ct_cache = _EmbeddingCache(self.bundle.hash, folder)
        from engine.library.pg_store import is_postgres_url

        # a folder, or a postgresql:// URL kept as given (a Path would fold its "//" into "/")
        self._library_path = (None if library is None else str(library) if is_postgres_url(library)
                              else Path(library).expanduser())
        self._library = None

    # ----------------------------------------------------------------- bundle facts

    @property
    def bundle_hash(self) -> str:
        return self.bundle.hash

    @property
    def bundle_name(self) -> str | None:
        return self.bundle.manifest.name

    @property
    def has_speech(self) -> bool:
        return self.bundle.manifest.speech is not None and "speech_head" in self.bundle.groups

    @property
    def has_text(self) -> bool:
        return self.bundle.manifest.text is not None and "text_head" in self.bundle.groups

    @property
    def has_dictation_head(self) -> bool:
        return self.bundle.manifest.dictation_head is not None

    @property
    def dictation_reader(self) -> str:
        """Which reader says what a dictation states: ``speech`` (the dictation head on the speech encoder's
        frames), ``cascade`` (the transcript read by the bundle's rule lexicon) or ``transcript`` (the transcript
        read by the bundle's learned transcript reader), whichever scored higher on
        the validation split when the bundle was made (``bundle.json`` -> ``dictation_reader``)."""
        return self.bundle.manifest.reader_choice

    @property
    def rule_lexicon(self):
        """The bundle's rule lexicon (:class:`engine.mention_rules.RuleLexicon`, what the cascade reader reads
        a transcript with), or None when the bundle carries none."""
        section = self.bundle.manifest.dictation_reader
        if section is None or not section.lexicon:
            return None
        return self._model("rule_lexicon")

    def describe(self) -> dict[str, Any]:
        """``{"name", "hash", "path"}`` of the bundle (the ``bundle`` field of every JSON output)."""
        return {"name": self.bundle_name, "hash": self.bundle_hash, "path": str(self.bundle.path)}

    # ----------------------------------------------------------------- models

    def _model(self, name: str):
        """Build (once) and return one bundle part (:data:`engine.weights.factory.PARTS`: ``ct``, ``speech``,
        ``text``, ``dictation``, ``prompts``, ``rule_lexicon`` ...)."""
        with self._lock:
            if name in self._models:
                self.load_timings_ms.setdefault(name, 0.0)  # built earlier, by this or another Engine
                return self._models[name]
            from engine.weights.factory import build_part

            started = time.perf_counter()
            model = build_part(self.bundle, name)
            if isinstance(model, torch.nn.Module):
                model = model.to(self.device).eval()
            self._models[name] = model
            self.load_timings_ms[name] = _ms(time.perf_counter() - started)
            return model

    def warm_up(self, *names: str) -> dict[str, float]:
        """Load the named models now (default: CT encoder, prompts, speech student and dictation head
        when the bundle has them), so that the first call is not the slow one. Returns load ms."""
        names = names or tuple(n for n, ok in (("spec", True), ("ct", True), ("prompts", True),
                                               ("thresholds", True), ("speech", self.has_speech),
                                               ("dictation", self.has_dictation_head)) if ok)
        for name in names:
            self._model(name)
        return dict(self.load_timings_ms)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def clear_memory_cache(self) -> None:
        """Forget the CT embeddings held in memory (the on-disk cache is kept)."""
        self._ct_cache.clear_memory()

    # ----------------------------------------------------------------- encoders

    def study_key(self, volume: Volume) -> str:
        """The cache / library key of a volume (series UID, or sha256 of the voxels)."""
        from engine.study_identity import study_key

        return study_key(volume)

    def encode_ct(self, volume: Volume | str | Path, *, series: str | None = None) -> np.ndarray:
        """Unit-norm CT embedding ``[D]`` (float32) of a volume (or of the study at a path)."""
        return self._encode_ct(volume, series)[0]

    def _encode_ct(self, volume, series=None) -> tuple[np.ndarray, bool]:
        if not isinstance(volume, Volume):
            volume = self.load_study(volume, series)
        return self._encode_ct_keyed(volume)[:2]

    def _encode_ct_keyed(self, volume: Volume) -> tuple[np.ndarray, bool, str]:
        """(embedding, whether it came from the cache, the study key): the key is computed once here."""
        from engine.study_identity import voxel_fingerprint

        # the UID names the series, the fingerprint its pixels: a series rewritten under its old UID
        # (a re-export, a regenerated sample) must not be answered from the cache
        uid = self.study_key(volume)
        key = f"{uid}|{voxel_fingerprint(volume)}"
        cached = self._ct_cache.get(key)
        if cached is not None:
            return cached, True, uid
        from engine.preprocess import prepare_ct

        prepared = prepare_ct(volume, self._model("spec"))
        x = torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))[None, None]
        with self._lock:
            model = self._model("ct")
            with torch.inference_mode(), self._autocast():
                emb = model(x.to(self.device))
        vec = _unit(emb[0], volume.metadata.get("source"))
        self._ct_cache.put(key, vec)
        return vec, False, uid

    def encode_speech(self, waveform: np.ndarray, sample_rate: int = 16_000) -> np.ndarray:
        """Unit-norm speech embedding ``[D]`` of a mono (or ``[samples, channels]``) waveform."""
        return self.encode_speech_frames(waveform, sample_rate, keep_frames=False)[0]

    def encode_speech_frames(self, waveform: np.ndarray, sample_rate: int = 16_000, *,
                             keep_frames: bool | None = None,
                             source: str | Path | None = None) -> tuple[np.ndarray, torch.Tensor | None]:
        """The speech embedding and, in the same encoder pass, the frames before pooling
        (``[frames, D]``, what a frame-level dictation head reads). ``keep_frames`` defaults to
        whether this bundle's dictation head needs them; the frames are None otherwise.
        ``source``: the recording's path, named in errors. No speech-presence check here (an
        embedding of anything is well defined); :meth:`analyze` and the CLI make it."""
        from engine.audio import MIN_SAMPLES, to_16k

        if not self.has_speech:
            raise BundleError("bundle has no speech encoder", self.bundle.path)
        if keep_frames is None:
            keep_frames = self.dictation_reads_frames
        wav = to_16k(np.asarray(waveform), sample_rate)
        if wav.size < MIN_SAMPLES:
            raise AudioError(f"dictation too short: {wav.size / 16000 * 1000:.0f} ms (need at least 25 ms)", source)
        if not np.isfinite(wav).all():
            raise AudioError("dictation holds NaN or infinite samples", source)
        with self._lock:
            model = self._model("speech")  # built in eval mode
            with torch.inference_mode(), self._autocast():
                emb, frames = model.encode_waveforms([wav], keep_frames=keep_frames)
        return _unit(emb[0], source), (frames[0] if frames else None)

    def encode_audio_file(self, path: str | Path) -> np.ndarray:
        """:meth:`encode_speech` of an audio file (any libsndfile format and rate); a file without
        speech raises :class:`engine.speech_presence.NoSpeechError` naming it."""
        from engine.audio import load_audio
        from engine.speech_presence import require_speech

        waveform = load_audio(path)
        require_speech(waveform, 16_000, path)
        return self.encode_speech_frames(waveform, 16_000, keep_frames=False, source=path)[0]

    def encode_text(self, text: str) -> np.ndarray:
        """Unit-norm text-tower embedding ``[D]`` of a typed query (needs the bundle's text tower)."""
        if not isinstance(text, str) or not text.strip():
            raise SpeechCTError("text query is empty")
        if not self.has_text:
            raise BundleError("bundle has no text tower: typed-text queries are not available", self.bundle.path)
        with self._lock:
            tower = self._model("text")
            with torch.inference_mode():
                emb = tower.encode([text.strip()])
        return _unit(emb[0])

    # ----------------------------------------------------------------- findings

    def _check_dim(self, vec, what: str) -> np.ndarray:
        v = np.asarray(vec, dtype=np.float32).reshape(-1)
        if v.size != self.dim:
            raise SpeechCTError(f"{what} embedding has {v.size} values, the bundle's space has {self.dim}")
        return v

    def rank(self, ct_emb) -> list[FindingScore]:
        """The bundle's findings for one CT embedding, most probable first (zero-shot prompts, thresholds)."""
        v = self._check_dim(ct_emb, "CT")
        return rank_findings(v, self._model("prompts"), self.logit_scale, self._model("thresholds"),
                             self._model("auroc"))

    @property
    def dictation_reads_frames(self) -> bool:
        """Whether the dictation head reads the speech encoder's frames (else the pooled embedding)."""
        section = self.bundle.manifest.dictation_head
        return section is not None and section.reads_frames

    def dictation(self, speech_emb, frames=None) -> list[DictationFinding]:
        """What the dictation says about each finding (the bundle's dictation head), label order.

        ``frames``: :meth:`encode_speech_frames`' frames of the same dictation, needed when the
        head reads frames (:attr:`dictation_reads_frames`)."""
        if not self.has_dictation_head:
            raise BundleError("bundle has no dictation head", self.bundle.path)
        v = self._check_dim(speech_emb, "speech")
        head = self._model("dictation")
        device = next(head.parameters()).device
        with self._lock, torch.inference_mode():
            if self.dictation_reads_frames:
                if frames is None:
                    raise SpeechCTError("this bundle's dictation head reads the dictation's frames: "
                                        "encode it with encode_speech_frames and pass frames")
                f = torch.as_tensor(frames, dtype=torch.float32)
                if f.dim() != 2 or f.shape[0] < 1:
                    raise SpeechCTError(f"dictation frames must be [frames, width], got {tuple(f.shape)}")
                try:
                    logits = head(f[None].to(device), torch.tensor([f.shape[0]], device=device))[0].float().cpu()
                except ValueError as err:  # frames of another encoder width
                    raise SpeechCTError(str(err)) from None
            else:
                logits = head(torch.from_numpy(v)[None].to(device))[0].float().cpu()
        section = self.bundle.manifest.dictation_head
        assert section is not None  # has_dictation_head was checked above
        return dictation_findings(logits, labels=tuple(section.labels), classes=section.classes)

    def transcribe(self, waveform, sample_rate: int) -> str:
        """The dictation's words (:mod:`engine.transcribe`; the model is built once per engine)."""
        from engine.audio import to_16k
        from engine.transcribe import Transcriber

        with self._lock:
            if "transcriber" not in self._models:
                self._models["transcriber"] = Transcriber(cpu_threads=max(1, torch.get_num_threads()))
            asr = self._models["transcriber"]
        return asr.transcribe(to_16k(np.asarray(waveform), sample_rate))

    def read_dictation(self, waveform, sample_rate: int, speech_emb=None, frames=None, *,
                       transcript: str | None = None) -> list[DictationFinding]:
        """What the dictation says about each finding, by the bundle's :attr:`dictation_reader`: the
        speech-native head (on ``speech_emb``/``frames`` when given, else encoded here), or the transcript
        (``transcript`` when already made, else :meth:`transcribe`) read by the bundle's rule lexicon
        (``cascade``) or by its learned transcript reader (``transcript``, :meth:`read_transcript`)."""
        if self.dictation_reader == "cascade":
            from engine.mention_rules import read_mentions

            lex = self._model("rule_lexicon")
            text = transcript if transcript is not None else self.transcribe(waveform, sample_rate)
            head = self.bundle.manifest.dictation_head
            classes = head.classes if head is not None else DICTATION_CLASSES
            return [DictationFinding(lab, st, 1.0, {c: float(c == st) for c in classes})
                    for lab, st in read_mentions(text, lex).items()]
        if self.dictation_reader == "transcript":
            return self.read_transcript(transcript if transcript is not None else self.transcribe(waveform, sample_rate))
        if speech_emb is None:
            speech_emb, frames = self.encode_speech_frames(waveform, sample_rate)
        return self.dictation(speech_emb, frames)

    def read_transcript(self, text: str) -> list[DictationFinding]:
        """What a transcript says about each finding, read by the bundle's learned transcript reader (a frame
        dictation head over the text tower's token states; ``dictation_reader.transcript_head``)."""
        from engine.models.dictation import pad_utterances

        head, tower = self._model("transcript_reader"), self._model("text")
        states = tower.token_states([text if text.strip() else "."])
        with self._lock, torch.inference_mode():
            logits = head(*pad_utterances(states))[0].float().cpu()
        section = self.bundle.manifest.dictation_head
        classes = section.classes if section is not None else DICTATION_CLASSES
        return dictation_findings(logits, labels=tuple(self.bundle.labels), classes=classes)

    def discrepancies(self, findings, dictation, *, min_dictation_confidence: float = 0.0) -> list[Discrepancy]:
        """Image vs dictation disagreements. ``findings``: :meth:`rank`'s list or a CT embedding;
        ``dictation``: :meth:`dictation`'s list or a speech embedding. Findings the image model is
        unreliable on (validation AUROC below ``min_finding_auroc``) are not checked."""
        if not (isinstance(findings, list) and all(isinstance(f, FindingScore) for f in findings)):
            findings = self.rank(findings)
        if not (isinstance(dictation, list) and all(isinstance(d, DictationFinding) for d in dictation)):
            dictation = self.dictation(dictation)
        return find_discrepancies(findings, dictation, min_dictation_confidence=min_dictation_confidence,
                                  min_auroc=self.min_finding_auroc)

    # ----------------------------------------------------------------- library

    @property
    def library(self):
        """The study library (opened on first use) for this bundle's hash and space."""
        with self._lock:
            if self._library is None:
                from engine.library import Library

                self._library = Library(self._library_path, bundle_hash=self.bundle_hash, dim=self.dim)
            return self._library

    def index_study(
        self,
        volume: Volume | str | Path,
        dictation: str | Path | tuple[np.ndarray, int] | None = None,
        *,
        series: str | None = None,
        dictation_path: str | Path | None = None,
        speech_embedding: np.ndarray | None = None,
        ct_embedding: np.ndarray | None = None,
    ):
        """Add one study, with its dictation when given, to the library: the one way the CLI and the app
        add a study. Returns the library's :class:`engine.library.StudyRecord`.

        ``dictation``: an audio file, or a ``(waveform, sample_rate)`` pair (``dictation_path`` then names
        the recording the library remembers). A dictation without speech raises
        :class:`engine.speech_presence.NoSpeechError` before anything is added. ``speech_embedding``: the
        dictation's embedding and ``ct_embedding`` the study's, when already computed (neither is encoded
        again); otherwise the CT embedding comes from the engine's cache when the study was encoded before.
        """
        speech = None if speech_embedding is None else self._check_dim(speech_embedding, "speech")
        if dictation is not None and speech is None:
            if isinstance(dictation, tuple):
                from engine.speech_presence import require_speech

                waveform, sample_rate = dictation
                require_speech(waveform, sample_rate, None if dictation_path is None else str(dictation_path))
                speech = self.encode_speech_frames(waveform, sample_rate, keep_frames=False,
                                                   source=dictation_path)[0]
            else:
                dictation_path = dictation
                speech = self.encode_audio_file(dictation)
        if not isinstance(volume, Volume):
            volume = self.load_study(volume, series)
        ct = self.encode_ct(volume) if ct_embedding is None else self._check_dim(ct_embedding, "CT")
        return self.library.add_study(volume, ct, series=series,
                                      dictation_path=None if dictation_path is None else str(dictation_path),
                                      dictation_embedding=speech)

    def similar(
        self,
        ct=None,
        speech=None,
        text=None,
        k: int = 10,
        exclude_uids: Iterable[str] = (),
        *,
        dictation=None,
        weights: dict[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest library studies to the given query embeddings, best first.

        ``ct``: a CT embedding (image to image); ``speech``: a spoken free-form query (matched to CT
        vectors); ``dictation``: a spoken report (matched to CT and dictation vectors); ``text``: a
        typed query, a string or its embedding. Several queries combine into one score by
        ``engine.library``'s rule (z-scores, ``weights`` per kind). ``exclude_uids``: uids, series or
        study UIDs or paths never returned (the query study's, see ``engine.library.query_uids``).
        Returns ``{"uid", "score", "cosines", "study"}`` dicts (``engine.library.Hit.to_json``).
        """
        query = {}
        for name, value in (("ct", ct), ("speech", speech), ("dictation", dictation), ("text", text)):
            if value is None:
                continue
            if name == "text" and isinstance(value, str):
                value = self.encode_text(value)
            query[name] = self._check_dim(value, name)
        if not query:
            raise SpeechCTError("a similarity search needs at least one of ct, speech, dictation or text")
        if k < 1:
            raise SpeechCTError(f"k must be >= 1, got {k}")
        hits = self.library.search(query, k=k, exclude_uids=tuple(exclude_uids), weights=weights)
        return [{"uid": h.record.uid, **h.to_json()} for h in hits]

    # ----------------------------------------------------------------- all at once

    def load_study(self, path: str | Path, series: str | None = None) -> Volume:
        from engine.io import load_volume

        return load_volume(path, series)

    def analyze(
        self,
        volume: Volume | str | Path,
        waveform: np.ndarray | None = None,
        sample_rate: int | None = None,
        *,
        series: str | None = None,
        similar_k: int = 0,
        audio_path: str | Path | None = None,
    ) -> Analysis:
        """Findings, and with a waveform the dictation and discrepancies; ``similar_k > 0`` also
        searches the library (the query study excluded). Timings in ms per stage.

        A waveform without speech (:mod:`engine.speech_presence`) raises
        :class:`engine.speech_presence.NoSpeechError` before anything is loaded or encoded: no
        dictation findings are made from silence or noise. ``audio_path`` names the recording in
        that message and in other audio errors. :class:`engine.session.StudySession` makes the same
        two steps (:meth:`analyze_study`, :meth:`add_dictation`) one at a time, never repeating the first.
        """
        t_all = time.perf_counter()
        if waveform is not None:
            if sample_rate is None:
                raise AudioError("a waveform needs its sample_rate", audio_path)
            from engine.speech_presence import require_speech

            require_speech(waveform, sample_rate, audio_path)
        load_ms = None
        if not isinstance(volume, Volume):
            volume = self.load_study(volume, series)
            load_ms = _ms(time.perf_counter() - t_all)
        study = self.analyze_study(volume, load_study_ms=load_ms)
        from engine.library import query_uids

        exclude = query_uids(volume, series, key=study.study["uid"]) if similar_k > 0 else ()
        if waveform is None:
            result = study
            if similar_k > 0:
                t = time.perf_counter()
                hits = self.similar(ct=study.ct_embedding, k=similar_k, exclude_uids=exclude)
                result = replace(study, similar=hits, timings={**study.timings, "similar": _ms(time.perf_counter() - t)})
        else:
            result = self.add_dictation(study, waveform, sample_rate, audio_path=audio_path, similar_k=similar_k,
                                        exclude_uids=exclude, speech_checked=True)
        return _with_total(result, time.perf_counter() - t_all)

    def analyze_study(self, volume: Volume, *, load_study_ms: float | None = None) -> Analysis:
        """The image half of :meth:`analyze`: the CT embedding (cached), the ranked findings, the findings
        left unchecked; no dictation. ``Analysis.ct_embedding`` carries the embedding for later steps."""
        t_all = time.perf_counter()
        timings: dict[str, float | None] = {"load_study": load_study_ms, "encode_speech": None, "dictation": None,
                                            "similar": None}
        t = time.perf_counter()
        self.warm_up("spec", "ct", "prompts", "thresholds")
        timings["load_models"] = _ms(time.perf_counter() - t)
        t = time.perf_counter()
        ct_emb, was_cached, uid = self._encode_ct_keyed(volume)
        timings["encode_ct"] = _ms(time.perf_counter() - t)
        t = time.perf_counter()
        findings = self.rank(ct_emb)
        timings["rank"] = _ms(time.perf_counter() - t)
        unchecked_labels = unchecked(findings, self.min_finding_auroc)  # known before any dictation
        md = volume.metadata
        study = {
            "uid": uid,
            "path": md.get("source"),
            "study_uid": md.get("study_uid"),
            "series_uid": md.get("series_uid"),
            "format": md.get("format"),
            "shape": [int(s) for s in volume.shape],
            "spacing": [float(s) for s in volume.spacing],
            "warnings": list(volume.warnings),
        }
        result = Analysis(bundle=self.describe(), device=str(self.device), study=study, findings=findings,
                          unchecked=unchecked_labels, timings=timings, cached={"ct": was_cached}, ct_embedding=ct_emb)
        return _with_total(result, time.perf_counter() - t_all + (load_study_ms or 0.0) / 1000.0)

    def add_dictation(
        self,
        study: Analysis,
        waveform: np.ndarray,
        sample_rate: int | None,
        *,
        audio_path: str | Path | None = None,
        similar_k: int = 0,
        exclude_uids: Iterable[str] = (),
        speech_checked: bool = False,
    ) -> Analysis:
        """:meth:`analyze_study`'s result extended by a dictation: what it says per finding, the
        discrepancies, and with ``similar_k`` the library's nearest studies (``exclude_uids``: the study's
        own identifiers). Nothing of the study is computed again. ``speech_checked``: the caller already
        made the speech-presence check."""
        t_all = time.perf_counter()
        if sample_rate is None:
            raise AudioError("a waveform needs its sample_rate", audio_path)
        if not speech_checked:
            from engine.speech_presence import require_speech

            require_speech(waveform, sample_rate, audio_path)
        timings = dict(study.timings)
        t = time.perf_counter()
        self.warm_up(*(("speech",) + (("dictation",) if self.has_dictation_head else ())))
        timings["load_models"] = round((timings.get("load_models") or 0.0) + _ms(time.perf_counter() - t), 2)
        t = time.perf_counter()
        speech_emb, frames = self.encode_speech_frames(waveform, sample_rate, source=audio_path)
        timings["encode_speech"] = _ms(time.perf_counter() - t)
        dictation = discrepancies = transcript = None
        if self.has_dictation_head:
            t = time.perf_counter()
            if self.dictation_reader in ("cascade", "transcript"):  # made once: the reader and the app share it
                transcript = self.transcribe(waveform, sample_rate)
            dictation = self.read_dictation(waveform, sample_rate, speech_emb, frames, transcript=transcript)
            discrepancies = self.discrepancies(study.findings, dictation)
            timings["dictation"] = _ms(time.perf_counter() - t)
        hits = None
        if similar_k > 0:
            t = time.perf_counter()
            hits = self.similar(ct=study.ct_embedding, dictation=speech_emb, k=similar_k, exclude_uids=exclude_uids)
            timings["similar"] = _ms(time.perf_counter() - t)
        result = replace(study, dictation=dictation, discrepancies=discrepancies, similar=hits, timings=timings,
                         speech_embedding=speech_emb, transcript=transcript)
        return _with_total(result, time.perf_counter() - t_all)


_TIMING_KEYS = ("load_study", "load_models", "encode_ct", "encode_speech", "rank", "dictation", "similar", "total")


def _with_total(result: Analysis, seconds: float) -> Analysis:
    """``result`` with its timings in the schema's order and ``total`` set to ``seconds``."""
    timings = {**result.timings, "total": _ms(seconds)}
    return replace(result, timings={k: timings.get(k) for k in _TIMING_KEYS})

