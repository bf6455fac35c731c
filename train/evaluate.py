"""Evaluation of a model set on a CT-RATE-layout split with its spoken reports (docs/design.md §3).

Rows (systems), each scored per voice group:

* ``text teacher``: CT embeddings vs the teacher's text prompts; retrieval query = the teacher's
  text embedding of the Findings (what was read aloud);
* ``naive student`` / ``distilled student``: CT embeddings vs *spoken* prompts ("{finding} is
  present." read by the group's voices, embedded by that student, voices averaged per prompt);
  retrieval query = the student's embedding of the spoken report; the dictation head's F1;
* ``ASR cascade``: every spoken report and prompt transcribed by faster-whisper (packaged
  Whisper-base), embedded by the teacher's text tower, scored the same way
  (:mod:`train.cascade`), on a fixed subset (the first ``cascade_n`` studies by volume name).

For every row: zero-shot AUROC / weighted F1 / accuracy / precision with bootstrap CIs
(:mod:`train.metrics`, CT-CLIP's protocol done right) and per finding AUPRC, ECE and the centred
AUROC (finding-specific skill, :data:`train.metrics.SKILL_METRICS`), the same protocol applied to the report
embedding itself (``report_zero_shot``: does the dictation's embedding carry its findings),
query→CT and CT→query Recall@k beside the random baseline; the dictation head's macro F1 per
class; a paired bootstrap of distilled − naive and distilled − teacher. CT→CT label-overlap
MAP@k on the CT embeddings once per split.

Per finding, for the image model (the text teacher's CT encoder and prompts, all studies): zero-shot
AUROC with its CI, centred AUROC, AUPRC beside the prevalence, ECE; the encoder's ceiling (a
supervised linear probe on the same CT embeddings, cross-validated on the evaluated studies,
:func:`train.metrics.linear_probe`); the data's ceiling (a supervised 3D CNN's per-study scores on
the same volumes, measured once by ``scripts/experiments/cnn_ceiling.py`` and read from its JSON:
:func:`recorded_ceiling`). Whether the teacher was trained with the auxiliary label loss
(``teacher.aux_label_weight``) is read from its provenance and stated beside the table: with it, the
CT encoder has seen the 18 labels, and "zero-shot" is not label-free.

Voice groups: the spoken reports of every given Speech-RATE root are pooled and split by the
manifest's ``voice`` column into ``training voices`` (voices that read the *train* split, from the
roots' ``train_manifest.csv``, else :func:`train.synth.voices.train_voices`), ``held-out voices``
(any other named voice) and ``recordings`` (no voice column: a user's own dictations in the
Speech-RATE layout).

The model-facing part is a few callables (:class:`EvalModels`): ``embed_ct(volumes)`` on prepared
volumes, ``embed_text(texts)``, ``speech[name](waveforms)`` and ``dictation[name](speech_emb)``,
so trained modules, a run folder (:func:`models_from_run`) or a bundle (:func:`models_from_bundle`)
plug in the same way.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError
from engine.findings import RELIABLE_AUROC, PromptBank
from engine.labels import DICTATION_CLASSES, LABELS, LEGACY_DICTATION_CLASSES, prompt_pair
from train import metrics as M

SYSTEMS = ("text teacher", "ASR cascade", "naive student", "distilled student")
#: studies in the committed bundle's CI regression set (fresh default-size phantoms, few enough for CI)
REGRESSION_N = 48
GROUP_TRAIN, GROUP_HELDOUT, GROUP_RECORDINGS = "training voices", "held-out voices", "recordings"


# --------------------------------------------------------------------------- model-facing callables


@dataclass
class EvalModels:
    """What evaluation needs from the models, as plain callables returning numpy ``[N, D]``.

    ``embed_ct``: prepared volumes (each ``engine.preprocess.prepare_ct`` output for ``spec``,
    ``(Z, Y, X)`` float) → CT embeddings. ``embed_text``: texts → the teacher's text embeddings.
    ``speech``: student name (``"distilled"``, ``"naive"``) → 16 kHz mono waveforms → embeddings.
    ``dictation``: student name → speech embeddings ``[N, D]`` → head logits ``[N, L, 3]``.
    ``dictation_frames``: student name → waveforms → (embeddings ``[N, D]``, head logits
    ``[N, L, 3]``) from one encoder pass, for a head that reads the encoder's frames (used instead
    of ``speech`` and ``dictation`` for that student's reports).
    ``text_prompts``: the teacher's text prompt bank (else made with ``embed_text``).
    """

    spec: Any  # engine.preprocess.PreprocessSpec
    logit_scale: float
    embed_ct: Callable[[list[np.ndarray]], np.ndarray]
    embed_text: Callable[[list[str]], np.ndarray] | None = None
    speech: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = field(default_factory=dict)
    dictation: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    dictation_frames: dict[str, Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]] = \
        field(default_factory=dict)
    text_prompts: PromptBank | None = None
    labels: tuple[str, ...] = LABELS
    provenance: dict[str, Any] = field(default_factory=dict)


def _numpy(fn):
    import torch

    def wrapped(*args):
        with torch.no_grad():
            out = fn(*args)
        return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)

    return wrapped


def ct_embedder(ct_encoder, batch: int = 2) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``embed_ct`` for an ``engine.models.ct.CTEncoder``: volumes ``(Z, Y, X)`` → ``[N, latent]``."""
    import torch

    ct_encoder.eval()
    device = next(ct_encoder.parameters()).device

    def embed(volumes: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(volumes), batch):
                x = torch.stack([torch.as_tensor(np.asarray(v, np.float32)) for v in volumes[i : i + batch]])
                out.append(ct_encoder(x[:, None].to(device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return embed


def speech_embedder(student) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``speech[name]`` for an ``engine.models.speech.SpeechStudent`` (eval mode)."""
    student.eval()
    return _numpy(lambda waveforms: student.embed_waveforms(list(waveforms)))


def head_logits(head) -> Callable[[np.ndarray], np.ndarray]:
    """``dictation[name]`` for an ``engine.models.dictation.DictationHead``."""
    import torch

    head.eval()
    return _numpy(lambda emb: head(torch.as_tensor(np.asarray(emb, np.float32))))


def speech_and_frame_head(student, head) -> Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """``dictation_frames[name]``: waveforms → the student's embeddings and a ``FrameDictationHead``'s
    logits on its frames, from one encoder pass."""
    import torch

    from engine.models.dictation import pad_utterances

    student.eval()
    head.eval()

    def run(waveforms):
        with torch.no_grad():
            emb, frames = student.encode_waveforms(list(waveforms), keep_frames=True)
            return emb.float().numpy(), head(*pad_utterances(frames)).float().numpy()

    return run


def _add_head(models: EvalModels, name: str, head, student) -> None:
    """Register a dictation head of either kind for the student ``name``."""
    if getattr(head, "input", "embedding") == "frames":
        models.dictation_frames[name] = speech_and_frame_head(student, head)
    else:
        models.dictation[name] = head_logits(head)


def text_embedder(tower) -> Callable[[list[str]], np.ndarray]:
    tower.eval()
    return _numpy(lambda texts: tower.encode(list(texts)))


def aux_label_weight(teacher_options: dict | None) -> float | None:
    """The teacher's ``aux_label_weight`` from its training options (a run config's ``teacher`` section,
    as a bundle's ``provenance.teacher.optim`` keeps it): 0.0 when the options leave it out (no label
    loss), None when there are no options to read (the teacher's training is not known)."""
    if not isinstance(teacher_options, dict):
        return None
    return float(teacher_options.get("aux_label_weight") or 0.0)


def models_from_bundle(bundle_dir: str | Path, *, naive: str | Path | None = None) -> EvalModels:
    """Callables from a bundle, every part built by the engine's factory (:mod:`engine.weights.factory`, the
    code the product runs): its CT encoder, text tower, speech student (as ``distilled``), dictation head
    and text prompts; ``naive`` = a
    student run folder (``student-naive/``) or a second bundle whose speech student is the naive one."""
    from engine.weights.bundle import load_bundle
    from engine.weights.factory import build_part

    b = load_bundle(bundle_dir)
    m = b.manifest
    models = EvalModels(spec=build_part(b, "spec"), logit_scale=m.logit_scale,
                        embed_ct=ct_embedder(build_part(b, "ct")), labels=tuple(m.labels),
                        provenance={"bundle": str(b.path), "bundle_hash": b.hash,
                                    "aux_label_weight": aux_label_weight(
                                        (m.provenance.get("teacher") or {}).get("optim"))})
    if m.text is not None:
        models.embed_text = text_embedder(build_part(b, "text"))
    if m.prompts is not None:
        models.text_prompts = build_part(b, "prompts")
    student = None
    if m.speech is not None:
        student = build_part(b, "speech")
        models.speech["distilled"] = speech_embedder(student)
    if m.dictation_head is not None:
        head = build_part(b, "dictation")  # three-state heads of older bundles included
        if student is not None or getattr(head, "input", "embedding") == "embedding":
            _add_head(models, "distilled", head, student)
    if naive is not None:
        naive = Path(naive)
        if (naive / "bundle.json").is_file():
            other = models_from_bundle(naive)
            models.speech["naive"] = other.speech["distilled"]
            for mine, theirs in ((models.dictation, other.dictation),
                                 (models.dictation_frames, other.dictation_frames)):
                if "distilled" in theirs:
                    mine["naive"] = theirs["distilled"]
        else:
            from train.recipes import load_student

            models.speech["naive"] = speech_embedder(load_student(naive)[0])
    return models


def models_from_run(run: str | Path) -> EvalModels:
    """Callables from a training run folder (``teacher/``, ``student/``, ``student-naive/``,
    ``dictation/``) through ``train.recipes``' loaders."""
    from train.recipes import load_student, load_teacher, prompt_texts

    run = Path(run)
    teacher = load_teacher(run / "teacher")
    embed_text = text_embedder(teacher.text)
    models = EvalModels(spec=teacher.spec, logit_scale=float(teacher.logit_scale),
                        embed_ct=ct_embedder(teacher.model.ct), embed_text=embed_text,
                        provenance={"run": str(run), "teacher_sha256": teacher.weights_hash,
                                    "aux_label_weight": aux_label_weight(teacher.meta.get("config", {}).get("teacher"))})
    texts = prompt_texts()
    models.text_prompts = PromptBank.from_rows(texts, embed_text(texts), LABELS, kind="text")
    from safetensors.torch import load_file

    from engine.models.dictation import build_head, head_config_from_dict

    for name, folder, heads in (("distilled", run / "student", run / "dictation"),
                                ("naive", run / "student-naive", run / "dictation-naive")):
        if not (folder / "model.safetensors").is_file():
            continue
        student = load_student(folder)[0]
        models.speech[name] = speech_embedder(student)
        if (heads / "head.safetensors").is_file():
            meta = json.loads((heads / "head.json").read_text())
            head = build_head(head_config_from_dict(meta["config"]))
            head.load_state_dict(load_file(str(heads / "head.safetensors")))
            _add_head(models, name, head, student)
    return models


# --------------------------------------------------------------------------- data


@dataclass
class Spoken:
    """One spoken report of the split: which study, which file, which voice (None: a recording)."""

    volume_name: str
    path: Path
    voice: str | None
    root: Path


def training_voices(speech_roots: Sequence[Path]) -> set[str]:
    """Voices that read the train split: from each root's ``train_manifest.csv``, else our synthetic set."""
    from train.data import speech_rate_manifest_path

    voices: set[str] = set()
    for root in speech_roots:
        manifest = speech_rate_manifest_path(root, "train")
        if manifest.is_file():
            with open(manifest, newline="", encoding="utf-8") as fh:
                voices |= {row["voice"] for row in csv.DictReader(fh) if row.get("voice")}
    if not voices:
        from train.synth.voices import train_voices

        voices = {v.id for v in train_voices()}
    return voices


def voice_group(voice: str | None, train_set: set[str]) -> str:
    if not voice:
        return GROUP_RECORDINGS
    return GROUP_TRAIN if voice in train_set else GROUP_HELDOUT


def spoken_reports(speech_roots: Sequence[Path], split: str) -> list[Spoken]:
    from train.data import SpeechRateIndex

    out = []
    for root in speech_roots:
        for r in SpeechRateIndex(root, split, missing="skip"):
            out.append(Spoken(r.volume_name, r.path, r.voice, Path(root)))
    return out


@dataclass
class PromptRecording:
    label: str
    polarity: str  # "present" | "absent"
    voice: str
    path: Path


def find_prompt_manifest(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        for p in (c / "manifest.csv", c / "prompts" / "manifest.csv"):
            if p.is_file():
                return p
    return None


def read_prompt_manifest(path: Path, labels: Sequence[str] = LABELS) -> list[PromptRecording]:
    """Spoken prompts as :func:`train.synth.speechrate.synthesize_prompts` writes them."""
    from train.data import read_csv_rows

    rows = read_csv_rows(path, ("label", "polarity", "voice", "path"), "spoken prompt manifest")
    out = []
    for row in rows:
        if row["label"] not in labels:
            continue
        if row["polarity"] not in ("present", "absent"):
            raise DataError(f"polarity {row['polarity']!r} is not present/absent", path)
        wav = Path(row["path"])
        out.append(PromptRecording(row["label"], row["polarity"], row["voice"],
                                   wav if wav.is_absolute() else path.parent / wav))
    return out


def _prompt_text(rec: PromptRecording) -> str:
    present, absent = prompt_pair(rec.label)
    return present if rec.polarity == "present" else absent


def prompts_for_group(recordings: list[PromptRecording], group: str, train_set: set[str]) -> list[PromptRecording]:
    """The prompt recordings read by the group's kind of voice (all of them if none match)."""
    if group == GROUP_RECORDINGS:
        return recordings
    chosen = [r for r in recordings if voice_group(r.voice, train_set) == group]
    return chosen or recordings


# --------------------------------------------------------------------------- scoring


@dataclass
class EvalConfig:
    """Protocol settings (see :class:`train.metrics.ZeroShotConfig`) and workload limits."""

    n_boot: int = 1000
    seed: int = 0
    threshold_on: str = "eval"
    calibration_fraction: float = 0.3
    labels_mode: int = 18
    recall_ks: tuple[int, ...] = M.RECALL_KS
    map_ks: tuple[int, ...] = M.MAP_KS
    cascade_n: int = 100
    #: spoken prompts of at most this many voices (of the group's kind) go through the ASR cascade:
    #: ASR is its slow part, and transcripts of one prompt barely differ between voices.
    cascade_prompt_voices: int = 2
    limit: int | None = None
    #: set size of the committed bundle's CI regression test (tests/train/test_default_bundle.py)
    regression_n: int = REGRESSION_N
    #: folds of the linear probe on the CT embeddings (0: no probe)
    probe_folds: int = M.PROBE_FOLDS

    def zero_shot(self) -> M.ZeroShotConfig:
        return M.ZeroShotConfig(n_boot=self.n_boot, seed=self.seed, threshold_on=self.threshold_on,
                                calibration_fraction=self.calibration_fraction, labels_mode=self.labels_mode)


def score_system(ct_emb: np.ndarray, query_emb: np.ndarray | None, bank: PromptBank, logit_scale: float,
                 labels: np.ndarray, cfg: EvalConfig, *, mentions: np.ndarray | None = None,
                 dictation_logits: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """All metrics of one system on one set of studies; returns (JSON-ready dict, P(present) ``[N, L]``)."""
    scores = bank.probabilities(np.asarray(ct_emb, np.float32), logit_scale)
    logits = M.pair_logits(ct_emb, bank.present, bank.absent, logit_scale)
    out: dict[str, Any] = {"n": int(len(labels)), "prompts": bank.kind,
                           "zero_shot": M.zero_shot_metrics(scores, labels, bank.labels, cfg.zero_shot(),
                                                            logits=logits)}
    if query_emb is not None:
        out["report_zero_shot"] = M.report_zero_shot_auroc(query_emb, bank.present, bank.absent, logit_scale,
                                                           labels, bank.labels)
        out["retrieval"] = {
            "query_to_ct": M.recall_at_k(query_emb, ct_emb, cfg.recall_ks, n_boot=cfg.n_boot, seed=cfg.seed),
            "ct_to_query": M.recall_at_k(ct_emb, query_emb, cfg.recall_ks, n_boot=cfg.n_boot, seed=cfg.seed),
        }
    if dictation_logits is not None and mentions is not None:
        pred = np.asarray(dictation_logits).argmax(axis=-1)
        if np.asarray(dictation_logits).shape[-1] == len(LEGACY_DICTATION_CLASSES):  # a head from before "uncertain"
            pred = np.array([DICTATION_CLASSES.index(c) for c in LEGACY_DICTATION_CLASSES])[pred]
        out["dictation"] = M.dictation_f1(pred, np.asarray(mentions, dtype=np.int64), DICTATION_CLASSES, bank.labels)
        out["dictation_pred"] = pred.tolist()  # per study, for the paired comparison with the cascade
        # the dictation check end to end: this system's image calls (its thresholds, and the reliability
        # gate read from this evaluation's AUROC lower bounds) against the reader's mention states
        zs = out["zero_shot"]
        if set(bank.labels) <= set(zs["thresholds"]):
            thresholds = np.array([zs["thresholds"][n] for n in bank.labels])
            checked = np.array([zs["per_finding"][n]["ci"]["auroc"][0] >= RELIABLE_AUROC for n in bank.labels])
            out["discrepancy"] = M.discrepancy_measures(pred, mentions, labels, bank.labels,
                                                        image_positive=scores > thresholds, checked=checked)
    return out, scores


def _cascade_dictation(transcripts: list[str], target: np.ndarray, systems: dict, pos: list[int],
                       cfg: EvalConfig) -> tuple[dict, dict]:
    """F1 of the rule labeler (:mod:`train.labeler`, training lexicon) on ASR transcripts, and the paired
    bootstrap of each speech-native reader against it on the same studies."""
    from train.labeler import label_report, training_lexicon

    lex = training_lexicon()
    pred = np.array([[DICTATION_CLASSES.index(label_report(t, lex)[lab]) for lab in LABELS] for t in transcripts])
    out = M.dictation_f1(pred, target, DICTATION_CLASSES, LABELS)
    return out, _speech_readers_against(pred, "cascade", target, systems, pos, cfg)


def _speech_readers_against(pred: np.ndarray, name: str, target: np.ndarray, systems: dict, pos: list[int],
                            cfg: EvalConfig) -> dict:
    """Paired bootstrap of each speech-native reader − the reader ``name`` (predictions ``pred``) on the same
    studies (``pos``: their rows in the speech systems' predictions)."""
    paired = {}
    for system in ("distilled student", "naive student"):
        speech_pred = systems.get(system, {}).get("dictation_pred")
        if speech_pred is not None:
            paired[f"{system} − {name}"] = M.dictation_f1_paired(
                np.asarray(speech_pred)[pos], pred, target, len(DICTATION_CLASSES), n_boot=cfg.n_boot, seed=cfg.seed)
    return paired


def _transcript_reader(reader, transcripts: list[str], target: np.ndarray, labels: np.ndarray,
                       image_positive: np.ndarray | None, systems: dict, pos: list[int], cfg: EvalConfig) -> dict:
    """The learned transcript reader (:mod:`train.text_reader`) on the cascade's transcripts: its F1, the
    dictation check's false alarms (and precision / recall with the text teacher's image calls), and the
    paired bootstrap of each speech-native reader against it on the same studies."""
    from train.text_reader import read_texts

    tower, head = reader
    t0 = time.perf_counter()
    pred = read_texts(tower, head, transcripts)
    out = {"dictation": M.dictation_f1(pred, target, DICTATION_CLASSES, LABELS),
           "seconds_per_report": (time.perf_counter() - t0) / max(1, len(transcripts)),
           "discrepancy": M.discrepancy_measures(pred, target, labels, LABELS, image_positive=image_positive),
           "paired": _speech_readers_against(pred, "transcript reader", target, systems, pos, cfg)}
    return out


def _paired(scores_a, scores_b, labels, names, res_a, res_b, cfg: EvalConfig) -> dict:
    sa, y, names16 = M.select_labels(scores_a, labels, names, cfg.labels_mode)
    sb, _, _ = M.select_labels(scores_b, labels, names, cfg.labels_mode)
    ta = np.array([res_a["zero_shot"]["thresholds"][n] for n in names16])
    tb = np.array([res_b["zero_shot"]["thresholds"][n] for n in names16])
    if cfg.threshold_on == "calibration":
        _, ev = M.calibration_split(len(y), cfg.calibration_fraction, cfg.seed)
        sa, sb, y = sa[ev], sb[ev], y[ev]
    return M.paired_bootstrap_difference(sa, sb, y, ta, tb, n_boot=cfg.n_boot, seed=cfg.seed)


# --------------------------------------------------------------------------- the evaluation


class _Embeddings:
    """Per-path caches so a waveform or volume is embedded once per model."""

    def __init__(self):
        self.store: dict[tuple[str, str], np.ndarray] = {}

    def get(self, model: str, keys: list[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        return self.get_many((model,), keys, lambda todo: (compute(todo),))[0]

    def get_many(self, models: tuple[str, ...], keys: list[str],
                 compute: Callable[[list[str]], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """Several outputs of one computation per key (``compute`` returns one array per model)."""
        todo = [k for k in dict.fromkeys(keys) if any((m, k) not in self.store for m in models)]
        if todo:
            for model, rows in zip(models, compute(todo)):
                for k, row in zip(todo, rows):
                    self.store[(model, k)] = np.asarray(row, np.float32)
        if not keys:
            return tuple(np.zeros((0, 0), np.float32) for _ in models)
        return tuple(np.stack([self.store[(m, k)] for k in keys]) for m in models)


def _batched_pairs(fn: Callable[[list], tuple[np.ndarray, ...]], batch: int) -> Callable[[list], tuple]:
    """:func:`_batched` for a function with several outputs per item."""
    def run(items: list) -> tuple:
        parts = [fn(items[i : i + batch]) for i in range(0, len(items), batch)]
        return tuple(np.concatenate([np.asarray(p[j], np.float32) for p in parts]) for j in range(len(parts[0])))

    return run


def _batched(fn: Callable[[list], np.ndarray], batch: int) -> Callable[[list], np.ndarray]:
    def run(items: list) -> np.ndarray:
        if not items:
            return np.zeros((0, 0), np.float32)
        return np.concatenate([np.asarray(fn(items[i : i + batch]), np.float32) for i in range(0, len(items), batch)])

    return run


def evaluate_bundle(
    bundle_or_models: EvalModels | str | Path,
    ctrate_root: str | Path,
    speechrate_root: str | Path | Sequence[str | Path] | None,
    split: str = "valid",
    *,
    config: EvalConfig | None = None,
    prompts: str | Path | None = None,
    synthesize_missing_prompts: bool = True,
    out_dir: str | Path | None = None,
    transcribe: Callable[[np.ndarray], str] | None = None,
    naive: str | Path | None = None,
    ct_cache: str | Path | None = None,
    train_voice_copy: bool = False,
    training_speech: str | Path | Sequence[str | Path] | None = None,
    ceiling: str | Path | None = None,
    text_reader: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a model set (see the module docstring); returns the JSON-ready result.

    ``bundle_or_models``: :class:`EvalModels`, a bundle folder or a run folder. ``speechrate_root``:
    one or more Speech-RATE-layout roots read for ``split``. ``prompts``: a spoken-prompt folder
    (``manifest.csv`` as ``synthesize_prompts`` writes); by default looked for in the speech roots
    and, when absent and espeak-ng works, synthesised into ``out_dir/prompts``. ``transcribe``
    replaces faster-whisper in the cascade (tests). ``ct_cache``: a ``train.cache.FrozenCache``
    folder (e.g. ``<data>/cache``) holding prepared volumes under the training keys, so volumes the
    trainer prepared are not prepared again. ``train_voice_copy``: also read the split aloud with
    the *training* voices (``train.synth.speechrate``, into ``out_dir/speech-rate-train-voices``,
    resumable) so that training and held-out voices are scored on the same studies.
    ``training_speech``: the Speech-RATE root(s) the models were trained on, whose train manifest
    names the training voices (default: the evaluated roots', right when the split is theirs; a
    separate test set read by other voices needs it). ``ceiling``: a recorded data ceiling (the JSON
    of ``scripts/experiments/cnn_ceiling.py``, :func:`recorded_ceiling`). ``text_reader``: a trained
    transcript reader folder (:mod:`train.text_reader`), scored on the cascade's transcripts beside the rule
    labeler. With ``out_dir``, writes ``evaluation.json`` and ``evaluation.md`` there.
    """
    from train.data import CTRateIndex

    cfg = config or EvalConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    models = _as_models(bundle_or_models, naive)
    names = list(models.labels)
    say = print if progress else (lambda *a, **k: None)

    index = CTRateIndex(ctrate_root, split, missing="skip")
    records = sorted(index.records, key=lambda r: r.volume_name)
    if cfg.limit:
        records = records[: cfg.limit]
    by_name = {r.volume_name: r for r in records}
    roots = [] if speechrate_root is None else (
        [Path(speechrate_root)] if isinstance(speechrate_root, (str, Path)) else [Path(r) for r in speechrate_root])

    if train_voice_copy:
        if out_dir is None:
            raise DataError("train_voice_copy needs an out_dir to write the extra Speech-RATE tree into")
        roots.append(_train_voice_copy(ctrate_root, Path(out_dir), split, cfg.seed, say))

    # CT embeddings (one CT encoder for every row: the teacher's, frozen while students train)
    t0 = time.perf_counter()
    say(f"embedding {len(records)} CT volumes ...")
    prepare = _ct_preparer(models.spec, ct_cache)
    ct_emb = _batched(lambda recs: models.embed_ct([prepare(r) for r in recs]), 4)(records)
    timings["ct_embed_s_per_volume"] = (time.perf_counter() - t0) / max(1, len(records))
    row_of = {r.volume_name: i for i, r in enumerate(records)}
    labels_all = np.stack([r.labels for r in records]).astype(np.int64)
    mentions_all = np.stack([r.mentions for r in records]) if index.has_mentions else None
    if not index.has_mentions:
        notes.append("no mentions CSV (real CT-RATE): dictation-head F1 not computed")

    result: dict[str, Any] = {
        "split": split, "n_studies": len(records), "labels": names, "labels_mode": cfg.labels_mode,
        "threshold_on": cfg.threshold_on, "n_boot": cfg.n_boot, "seed": cfg.seed,
        "logit_scale": models.logit_scale, "provenance": models.provenance,
        "ct_to_ct": M.label_overlap_map_at_k(ct_emb, labels_all, cfg.map_ks),
        "groups": {},
    }

    text_bank = models.text_prompts
    if text_bank is None and models.embed_text is not None:
        texts = [t for lab in names for t in prompt_pair(lab)]
        text_bank = PromptBank.from_rows(texts, models.embed_text(texts), names, kind="text")
    if text_bank is None:
        raise DataError("the model set has neither text prompts nor a text tower: nothing to score CT against")

    all_text = _batched(models.embed_text, 16)([r.findings for r in records]) if models.embed_text else None
    result["text_teacher_all"], teacher_scores = score_system(ct_emb, all_text, text_bank, models.logit_scale,
                                                              labels_all, cfg)
    if cfg.regression_n and len(records) > cfg.regression_n:
        result["regression_reference"] = {
            "system": "text teacher (the bundle's CT encoder and text prompts)",
            **M.subset_macro_auroc_spread(teacher_scores, labels_all, cfg.regression_n, seed=cfg.seed)}
    result["teacher_training"] = teacher_training(models.provenance.get("aux_label_weight"))
    if cfg.probe_folds and len(records) >= 2 * cfg.probe_folds:
        t0 = time.perf_counter()
        say(f"linear probe on the CT embeddings ({cfg.probe_folds}-fold) ...")
        result["linear_probe"] = M.linear_probe(ct_emb, labels_all, names, folds=cfg.probe_folds, seed=cfg.seed,
                                                n_boot=cfg.n_boot, labels_mode=cfg.labels_mode)
        timings["linear_probe_s"] = time.perf_counter() - t0
    elif cfg.probe_folds:
        notes.append(f"linear probe skipped: {len(records)} studies are too few for {cfg.probe_folds} folds")
    if cfg.threshold_on == "calibration" and ("linear_probe" in result or ceiling is not None):
        notes.append("the linear probe and the 3D CNN ceiling are scored on all studies, the zero-shot rows on the "
                     "studies outside the calibration subset")
    if ceiling is not None:
        result["cnn_ceiling"] = recorded_ceiling(ceiling, [r.volume_name for r in records], labels_all, names, cfg)
        if "not_comparable" in result["cnn_ceiling"]:
            notes.append(f"3D CNN ceiling {ceiling}: {result['cnn_ceiling']['not_comparable']}")

    spoken = [s for s in spoken_reports(roots, split) if s.volume_name in by_name]
    # the voices the models were trained on: by default those that read this data's train split
    train_set = training_voices(roots if training_speech is None else
                                [Path(p) for p in ([training_speech] if isinstance(training_speech, (str, Path))
                                                   else training_speech)])
    groups: dict[str, list[Spoken]] = {}
    seen: set[tuple[str, str]] = set()
    for s in spoken:  # one spoken report per study and group (the first root's)
        name = voice_group(s.voice, train_set)
        if (name, s.volume_name) not in seen:
            seen.add((name, s.volume_name))
            groups.setdefault(name, []).append(s)
    if not spoken:
        notes.append("no spoken reports for this split: only the text teacher is scored")
        groups = {"all studies": []}

    recordings = _spoken_prompts(prompts, roots, out_dir, synthesize_missing_prompts, notes, say)
    cache = _Embeddings()
    transcriber = transcribe
    memo = _load_memo(out_dir) if transcribe is None else {}
    reader = None
    if text_reader is not None:
        from train.text_reader import load_text_reader

        reader = load_text_reader(text_reader)
    for group_name, items in groups.items():
        items = sorted(items, key=lambda s: s.volume_name)
        rows = np.array([row_of[s.volume_name] for s in items], dtype=int) if items else np.arange(len(records))
        y, ct = labels_all[rows], ct_emb[rows]
        mentions = mentions_all[rows] if mentions_all is not None else None
        voices = sorted({s.voice for s in items if s.voice})
        say(f"[{group_name}] {len(rows)} studies, voices: {', '.join(voices) or '-'}")
        g: dict[str, Any] = {"n": int(len(rows)), "voices": voices, "systems": {}, "paired": {}}
        raw: dict[str, np.ndarray] = {}

        text_query = None
        if models.embed_text is not None:
            findings = [records[i].findings for i in rows]
            text_query = _batched(models.embed_text, 16)(findings)
        res, raw["text teacher"] = score_system(ct, text_query, text_bank, models.logit_scale, y, cfg)
        g["systems"]["text teacher"] = res

        group_prompts = prompts_for_group(recordings, group_name, train_set) if recordings else []
        if items and group_prompts:
            g["prompt_voices"] = sorted({r.voice for r in group_prompts})
        for student in ("naive", "distilled"):
            embed = models.speech.get(student)
            if embed is None or not items:
                continue
            t0 = time.perf_counter()
            paths = [str(s.path) for s in items]
            both = models.dictation_frames.get(student) if mentions is not None else None
            logits = None
            if both is not None:  # embedding and frame-head logits from one encoder pass
                query, logits = cache.get_many((student, f"{student}/dictation"), paths,
                                               lambda ps, f=both: _batched_pairs(lambda b: f(load(b)), 8)(ps))
            else:
                query = cache.get(student, paths, lambda ps, e=embed: _batched(lambda b: e(load(b)), 8)(ps))
            spent = time.perf_counter() - t0
            bank = text_bank
            if group_prompts:
                ppaths = [str(r.path) for r in group_prompts]
                pemb = cache.get(student, ppaths, lambda ps, e=embed: _batched(lambda b: e(load(b)), 8)(ps))
                bank = PromptBank.from_rows([_prompt_text(r) for r in group_prompts], pemb, names, kind="spoken")
            else:
                note = f"{group_name}: no spoken prompts, the students are scored with the teacher's text prompts"
                if note not in notes:
                    notes.append(note)
            if both is None and student in models.dictation and mentions is not None:
                logits = models.dictation[student](query)
            res, raw[f"{student} student"] = score_system(ct, query, bank, models.logit_scale, y, cfg,
                                                          mentions=mentions, dictation_logits=logits)
            res["seconds_per_report"] = spent / max(1, len(items)) if spent > 0 else None
            g["systems"][f"{student} student"] = res

        if items and models.embed_text is not None and cfg.cascade_n > 0:
            from engine.transcribe import Transcriber
            from train.cascade import run_cascade

            if transcriber is None:
                t0 = time.perf_counter()
                asr = Transcriber()
                asr.load()  # model loading is set-up, not per-report time
                transcriber = asr.transcribe
                timings["asr_load_s"] = time.perf_counter() - t0
            subset = items[: cfg.cascade_n]
            sub_rows = np.array([row_of[s.volume_name] for s in subset], dtype=int)
            say(f"[{group_name}] ASR cascade on {len(subset)} reports ...")
            rpaths = [str(s.path) for s in subset]
            casc = run_cascade(lambda i, ps=rpaths: load([ps[i]])[0], models.embed_text, transcriber,
                               keys=[_file_key(p) for p in rpaths], memo=memo, progress=progress)
            _save_memo(memo, out_dir)
            bank = text_bank
            if group_prompts:
                keep = sorted({r.voice for r in group_prompts})[: max(1, cfg.cascade_prompt_voices)]
                cascade_prompts = [r for r in group_prompts if r.voice in keep]
                ppaths = [str(r.path) for r in cascade_prompts]
                say(f"[{group_name}] ASR cascade on {len(ppaths)} spoken prompts ...")
                pc = run_cascade(lambda i, ps=ppaths: load([ps[i]])[0], models.embed_text, transcriber,
                                 keys=[_file_key(p) for p in ppaths], memo=memo, progress=progress)
                _save_memo(memo, out_dir)
                bank = PromptBank.from_rows([_prompt_text(r) for r in cascade_prompts], pc.embeddings, names,
                                            kind="spoken, transcribed")
                res_prompt_voices = keep
            res, _ = score_system(ct_emb[sub_rows], casc.embeddings, bank, models.logit_scale, labels_all[sub_rows], cfg)
            res["seconds_per_report"] = casc.seconds_per_report
            res["timing"] = casc.timing()
            if group_prompts:
                res["prompt_voices"] = res_prompt_voices
            res["subset"] = f"first {len(subset)} studies by volume name"
            res["transcripts"] = {s.volume_name: t for s, t in zip(subset[:5], casc.transcripts[:5])}
            # the other rows' retrieval on the same subset, for a like-for-like comparison
            same = {}
            pos = [int(np.flatnonzero(rows == r)[0]) for r in sub_rows]
            for name in ("text teacher", "naive student", "distilled student"):
                if name == "text teacher":
                    q = text_query[pos] if text_query is not None else None
                else:
                    emb = models.speech.get(name.split()[0])
                    q = cache.get(name.split()[0], [str(s.path) for s in subset], None) if emb is not None else None
                if q is not None:
                    same[name] = M.recall_at_k(q, ct_emb[sub_rows], cfg.recall_ks)
            res["same_subset_retrieval"] = same
            if mentions is not None:  # the cascade's dictation reader: the rule labeler on the transcripts
                res["dictation"], res["dictation_paired"] = _cascade_dictation(
                    casc.transcripts, mentions[pos], g["systems"], pos, cfg)
                teacher = g["systems"]["text teacher"]["zero_shot"]
                image = None
                if set(names) <= set(teacher["thresholds"]):
                    image = raw["text teacher"][pos] > np.array([teacher["thresholds"][n] for n in names])
                if reader is not None:  # the learned transcript reader on the same transcripts
                    say(f"[{group_name}] transcript reader on {len(subset)} transcripts ...")
                    res["transcript_reader"] = _transcript_reader(reader, casc.transcripts, mentions[pos],
                                                                  labels_all[sub_rows], image, g["systems"], pos, cfg)
            g["systems"]["ASR cascade"] = res

        if "distilled student" in raw and "naive student" in raw:
            g["paired"]["distilled − naive"] = _paired(raw["distilled student"], raw["naive student"], y, names,
                                                        g["systems"]["distilled student"], g["systems"]["naive student"], cfg)
        if "distilled student" in raw:
            g["paired"]["distilled − text teacher"] = _paired(raw["distilled student"], raw["text teacher"], y, names,
                                                               g["systems"]["distilled student"],
                                                               g["systems"]["text teacher"], cfg)
        result["groups"][group_name] = g

    timings["total_s"] = time.perf_counter() - t_start
    result["timings"] = timings
    result["notes"] = notes
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def teacher_training(weight: float | None) -> dict:
    """What "zero-shot" means for the evaluated teacher: trained with or without the auxiliary label loss."""
    if weight is None:
        return {"aux_label_weight": None,
                "zero_shot": "unknown: the model set does not say how its teacher was trained"}
    if weight > 0:
        return {"aux_label_weight": weight,
                "zero_shot": f"with the auxiliary label loss (teacher.aux_label_weight = {weight:g}): the CT encoder "
                             f"was trained on the 18 labels, so its zero-shot AUROC is not label-free"}
    return {"aux_label_weight": 0.0,
            "zero_shot": "without the auxiliary label loss (teacher.aux_label_weight = 0): zero-shot in CT-CLIP's "
                         "sense, the CT encoder never saw a label"}


#: What ``scripts/experiments/cnn_ceiling.py`` writes (and :func:`recorded_ceiling` reads): ``scores``
#: maps each evaluated volume name to its P(present) per label, in ``labels`` order.
CEILING_KEYS = ("kind", "labels", "scores")


def recorded_ceiling(path: str | Path, volume_names: Sequence[str], labels: np.ndarray, names: Sequence[str],
                     cfg: EvalConfig) -> dict:
    """The data's ceiling on exactly these studies: a recorded supervised model's per-study scores
    (``path``, :data:`CEILING_KEYS`), AUROC per finding with CIs on the same bootstrap draws as the
    zero-shot rows. Volumes it has no score for make it ``not_comparable`` (said, not scored)."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the recorded ceiling ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(rec, dict) or any(k not in rec for k in CEILING_KEYS):
        raise DataError(f"not a recorded ceiling: needs the keys {', '.join(CEILING_KEYS)}", path)
    order = [rec["labels"].index(n) if n in rec["labels"] else None for n in names]
    if None in order:
        raise DataError(f"the recorded ceiling has no scores for {names[order.index(None)]!r}", path)
    info = {"source": str(path), "kind": rec["kind"],
            **{k: rec[k] for k in ("split", "config", "seconds", "train", "measured") if k in rec}}
    missing = [v for v in volume_names if v not in rec["scores"]]
    if missing:
        return {**info, "not_comparable": f"no score for {len(missing)} of the {len(volume_names)} evaluated "
                                          f"volumes (e.g. {missing[0]}): measured on other volumes"}
    try:
        scores = np.array([[rec["scores"][v][i] for i in order] for v in volume_names], dtype=np.float64)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the recorded ceiling's scores are not one number per label and volume ({exc})", path) from exc
    scores, y, sel = M.select_labels(scores, labels, names, cfg.labels_mode)
    return {**info, **M.auroc_with_ci(scores, y, sel, n_boot=cfg.n_boot, seed=cfg.seed)}


def _train_voice_copy(ctrate_root, out_dir: Path, split: str, seed: int, say) -> Path:
    """The split's Findings read by the training voices (a second Speech-RATE root)."""
    import os

    from train.synth.speechrate import synthesize_speech_rate
    from train.synth.voices import train_voices

    root = out_dir / "speech-rate-train-voices"
    say(f"reading the {split} Findings with the training voices into {root} ...")
    synthesize_speech_rate(ctrate_root, root, splits=(split,), seed=seed + 1, workers=os.cpu_count() or 1,
                           voices=[v.id for v in train_voices()], progress=False)
    return root


MEMO_NAME = "asr_transcripts.json"


def _file_key(path: str) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_memo(out_dir) -> dict[str, list]:
    """Transcripts of an earlier run in ``out_dir`` (ASR is the slow part; reruns reuse it)."""
    path = Path(out_dir) / MEMO_NAME if out_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_memo(memo: dict, out_dir) -> None:
    if out_dir is None or not memo:
        return
    path = Path(out_dir) / MEMO_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(memo))
    tmp.replace(path)


def _ct_preparer(spec, ct_cache) -> Callable[[Any], np.ndarray]:
    """record → prepared volume ``(Z, Y, X)`` float32, through the trainer's cache when given."""
    from engine.preprocess import prepare_ct
    from train.data import load_record_volume

    def compute(record):
        return prepare_ct(load_record_volume(record), spec)

    if ct_cache is None:
        return compute
    from train import cache as C

    cache = C.FrozenCache(ct_cache)

    def cached(record):
        overrides = {}
        if not record.fixed and record.meta is not None:  # the same overrides train.recipes keys with
            overrides = {"slope": record.meta.slope, "intercept": record.meta.intercept,
                         "spacing": list(record.meta.spacing)}
        key = C.ct_key(record.path, overrides, spec.to_json())
        return cache.get_or_compute("ct", key, lambda: compute(record)).astype(np.float32)

    return cached


def load(paths: list[str]) -> list[np.ndarray]:
    """16 kHz mono waveforms of the given files (read when needed, not kept: a split is GBs of audio)."""
    from train.data import read_audio

    return [read_audio(Path(p)) for p in paths]


def _as_models(obj, naive) -> EvalModels:
    if isinstance(obj, EvalModels):
        return obj
    path = Path(obj)
    if (path / "bundle.json").is_file():
        return models_from_bundle(path, naive=naive)
    if (path / "teacher").is_dir():
        models = models_from_run(path)
        if naive is not None:  # an explicit naive student replaces the run's own student-naive/
            from train.recipes import load_student

            models.speech["naive"] = (models_from_bundle(naive).speech["distilled"]
                                      if (Path(naive) / "bundle.json").is_file()
                                      else speech_embedder(load_student(naive)[0]))
        return models
    raise DataError("neither a bundle (bundle.json) nor a run folder (teacher/)", path)


def _spoken_prompts(prompts, roots, out_dir, synthesize, notes, say) -> list[PromptRecording]:
    candidates = [Path(prompts)] if prompts is not None else [*roots, *(r.parent for r in roots)]
    manifest = find_prompt_manifest(candidates)
    if manifest is None and prompts is not None:
        raise DataError("no spoken prompt manifest.csv here", prompts)
    if manifest is None and synthesize and out_dir is not None:
        try:
            from train.synth.speechrate import synthesize_prompts

            say("synthesising spoken prompts (espeak-ng) ...")
            manifest = synthesize_prompts(Path(out_dir), progress=False)
            notes.append(f"spoken prompts synthesised into {manifest.parent}")
        except Exception as exc:  # TTS missing: the students fall back to text prompts, said in the notes
            notes.append(f"spoken prompts unavailable ({str(exc).splitlines()[0]})")
            return []
    return read_prompt_manifest(manifest) if manifest is not None else []


# --------------------------------------------------------------------------- output


def _fmt_ci(entry: dict) -> str:
    lo, hi = entry["ci"]
    if not np.isfinite(entry["value"]):
        return "–"
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{entry['value']:.3f}"


def to_markdown(result: dict) -> str:
    """The summary tables: one per voice group, rows in :data:`SYSTEMS` order."""
    lines = [f"# Evaluation on {result['split']} ({result['n_studies']} studies)", "",
             f"Zero-shot: CT-CLIP's prompt pair softmax; thresholds chosen on `{result['threshold_on']}`; "
             f"{result['n_boot']} bootstrap draws over studies (seed {result['seed']}), 95 % CIs; "
             f"{result['labels_mode']} labels.", ""]
    ks = None
    for gname, g in result["groups"].items():
        lines += [f"## {gname} (n = {g['n']}; voices: {', '.join(g['voices']) or '–'})", ""]
        systems = g["systems"]
        any_ret = next((s["retrieval"]["query_to_ct"] for s in systems.values() if "retrieval" in s), None)
        ks = list(any_ret["k"]) if any_ret else []
        head = ["system", "prompts", "AUROC", "F1", "Acc", "Prec"] + [f"R@{k}" for k in ks] + ["dictation F1", "s/report"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in SYSTEMS:
            s = systems.get(name)
            if s is None:
                continue
            z = s["zero_shot"]["macro"]
            cells = [name + (f" (n={s['n']})" if s["n"] != g["n"] else ""), s["prompts"]]
            cells += [_fmt_ci(z[m]) for m in M.METRICS]
            ret = s.get("retrieval", {}).get("query_to_ct")
            for k in ks:
                kk = ret["k"].get(k) if ret else None
                cells.append(f"{kk['recall']:.3f} ({kk['random']:.3f})" if kk else "–")
            d = s.get("dictation")
            cells.append(f"{d['macro_f1']:.3f}" if d else "–")
            sp = s.get("seconds_per_report")
            cells.append(f"{sp:.2f}" if sp else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("R@k: speech (or text) → CT, random baseline k/N in brackets.")
        for pname, p in g.get("paired", {}).items():
            parts = [f"{m} {p[m]['diff']:+.3f} [{p[m]['ci'][0]:+.3f}, {p[m]['ci'][1]:+.3f}]"
                     + (" *" if p[m]["excludes_zero"] else "") for m in ("auroc", "f1")]
            lines.append(f"- paired bootstrap {pname}: " + "; ".join(parts) + " (* = 95 % CI excludes 0)")
        lines.append("")
        lines += _readers_markdown(systems)
    t = result.get("text_teacher_all")
    if t:
        z = t["zero_shot"]["macro"]
        lines.append(f"Text teacher on all {t['n']} studies: " + ", ".join(f"{m} {_fmt_ci(z[m])}" for m in M.METRICS))
        lines += ["", *per_finding_markdown(result)]
    c = result.get("ct_to_ct")
    if c:
        lines.append("CT→CT label-overlap MAP@k (no self-match): "
                     + ", ".join(f"@{k} {v:.3f}" for k, v in c["k"].items()) + f" (random {c['random']:.3f})")
    for note in result.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def _fmt_auroc(value: float, ci) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and np.isfinite(ci[0]) else f"{value:.3f}"


def per_finding_markdown(result: dict) -> list[str]:
    """The per-finding table of the image model (text teacher, all studies) with its two ceilings."""
    from engine.findings import RELIABLE_AUROC

    t = result["text_teacher_all"]
    zs = t["zero_shot"]
    probe = result.get("linear_probe")
    cnn = result.get("cnn_ceiling")
    cnn_ok = cnn is not None and "per_finding" in cnn
    training = result.get("teacher_training") or teacher_training(None)
    lines = [f"## Per finding: the image model on all {zs['n_studies']} studies", "",
             f"Teacher trained {training['zero_shot']}.", "",
             "| finding | positives | zero-shot AUROC | centred AUROC | AUPRC (prevalence) | ECE | "
             "linear probe AUROC | 3D CNN AUROC | gate |", "|" + "---|" * 9]

    def row(name, per, probe_entry, cnn_entry, gate):
        ci = per.get("ci", {})
        return ("| " + " | ".join([
            name, str(per.get("positives", "")), _fmt_auroc(per["auroc"], ci.get("auroc")),
            _fmt_auroc(per["centred_auroc"], ci.get("centred_auroc")),
            f"{per['auprc']:.3f} ({per['prevalence']:.3f})" if np.isfinite(per["auprc"]) else "–",
            f"{per['ece']:.3f}" if np.isfinite(per["ece"]) else "–",
            _fmt_auroc(probe_entry["auroc"], probe_entry["ci"]) if probe_entry else "–",
            _fmt_auroc(cnn_entry["auroc"], cnn_entry["ci"]) if cnn_entry else "not recorded",
            gate]) + " |")

    gated = gate_auroc(zs)  # what the export writes for the engine (lower CI bound, or point without a bootstrap)
    for name, per in zs["per_finding"].items():
        value = gated["auroc"].get(name)
        gate = "–" if value is None else ("checked" if value >= RELIABLE_AUROC else "weak")
        lines.append(row(name, per, probe["per_finding"].get(name) if probe else None,
                         cnn["per_finding"].get(name) if cnn_ok else None, gate))
    macro = {m: zs["macro"][m]["value"] for m in (*M.METRICS, *M.SKILL_METRICS)}
    macro_ci = {m: zs["macro"][m]["ci"] for m in (*M.METRICS, *M.SKILL_METRICS)}
    prevalence = float(np.mean([p["prevalence"] for p in zs["per_finding"].values()]))
    lines.append(row("**macro**", {**macro, "ci": macro_ci, "positives": "", "prevalence": prevalence},
                     {"auroc": probe["macro"]["value"], "ci": probe["macro"]["ci"]} if probe else None,
                     {"auroc": cnn["macro"]["value"], "ci": cnn["macro"]["ci"]} if cnn_ok else None, ""))
    lines += ["", f"- Centred AUROC: each study's zero-shot logits minus their mean over the findings (removes the "
                  f"shared \"how abnormal is this chest\" axis). ECE: {zs.get('ece_bins', M.ECE_BINS)} equal-width "
                  f"bins of P(present). Gate: the engine checks a finding against the dictation only when the "
                  + ("lower 95 % CI bound of its zero-shot AUROC" if gated["auroc_statistic"] == "ci_lower" else
                     "point estimate of its zero-shot AUROC (no bootstrap here)")
                  + f" is at least {RELIABLE_AUROC} (`engine.findings.RELIABLE_AUROC`)."]
    if probe:
        lines.append(f"- Linear probe (the encoder's ceiling): {probe['method']}.")
    if cnn_ok:
        lines.append(f"- 3D CNN (the data's ceiling): {cnn['kind']}, recorded in `{cnn['source']}`.")
    elif cnn is not None:
        lines.append(f"- 3D CNN ceiling in `{cnn['source']}` not shown: {cnn['not_comparable']}.")
    else:
        lines.append("- 3D CNN (the data's ceiling): not recorded for these volumes "
                     "(`scripts/experiments/cnn_ceiling.py`, then `speechct-train evaluate --ceiling FILE`).")
    return lines + [""]


def _readers_markdown(systems: dict) -> list[str]:
    """The dictation readers of one voice group: macro F1 over the mention states, per state, and how
    often a present mention is read as absent; the dictation check each reader gives; the paired
    comparisons with the cascade's readers."""
    transcript = systems.get("ASR cascade", {}).get("transcript_reader")
    readers = [(f"{name} (speech-native)" if name != "ASR cascade" else "ASR + rule labeler", s)
               for name, s in systems.items() if s.get("dictation")]
    readers += [("ASR + transcript reader", transcript)] if transcript else []
    if not readers:
        return []
    classes = list(readers[0][1]["dictation"]["per_class"])
    out = ["Dictation readers (macro F1 over the mention states):", "",
           "| reader | n | macro F1 | " + " | ".join(classes) + " | present read absent |",
           "|" + "---|" * (4 + len(classes))]
    for label, s in readers:
        d = s["dictation"]
        n = sum(d["support"].values()) // max(1, len(d["per_finding_macro_f1"]))
        pra = d.get("present_read_absent")
        tail = f" | {pra:.3f} |" if pra is not None else " | – |"
        out.append(f"| {label} | {n} | {d['macro_f1']:.3f} | "
                   + " | ".join(f"{d['per_class'][c]:.3f}" for c in classes) + tail)
    for label, s in readers:
        d = s.get("discrepancy")
        if not d:
            continue
        line = (f"- {label}, the dictation check: with the image side replaced by the truth, "
                f"{d['false_alarm_studies']:.1%} of {d['n_studies']} studies show a discrepancy the dictation did "
                f"not plant ({d['false_alarms']} false; {d['true_discrepancies']} planted)")
        if "precision" in d:
            line += (f"; with the image model's calls on the {len(d['checked_findings'])} findings that pass the "
                     f"gate: precision {d['precision']:.2f} ({d['true_shown']} of {d['shown']} shown), "
                     f"recall {d['recall']:.2f}")
        out.append(line)
    paired = {**systems.get("ASR cascade", {}).get("dictation_paired", {}), **(transcript or {}).get("paired", {})}
    for name, p in paired.items():
        star = " *" if p["ci"][0] > 0 or p["ci"][1] < 0 else ""
        out.append(f"- paired bootstrap {name} (n = {p['n']}): macro F1 {p['diff']:+.3f} "
                   f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]{star}")
    return out + [""]


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_outputs(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "evaluation.json", out / "evaluation.md"
    jpath.write_text(json.dumps(result, indent=1, default=_json_default, allow_nan=True) + "\n")
    mpath.write_text(to_markdown(result))
    return jpath, mpath


def summary_for_bundle(result: dict) -> dict:
    """The compact table a bundle's ``evaluation`` section holds (macro values and CIs, R@k)."""
    out: dict[str, Any] = {"split": result["split"], "n_studies": result["n_studies"],
                           "threshold_on": result["threshold_on"], "n_boot": result["n_boot"], "groups": {}}
    if "regression_reference" in result:
        out["regression_reference"] = result["regression_reference"]
    if "teacher_training" in result:
        out["teacher_training"] = result["teacher_training"]
    t = result.get("text_teacher_all")
    if t:  # the image model per finding, with its ceilings (numbers only; evaluation.json has the rest)
        probe = (result.get("linear_probe") or {}).get("per_finding", {})
        cnn = (result.get("cnn_ceiling") or {}).get("per_finding", {})
        per = {}
        for name, p in t["zero_shot"]["per_finding"].items():
            row = {m: p[m] for m in ("auroc", "centred_auroc", "auprc", "prevalence", "ece") if m in p}
            row["auroc_ci"] = p["ci"]["auroc"]
            if name in probe:
                row["probe_auroc"] = probe[name]["auroc"]
            if name in cnn:
                row["cnn_auroc"] = cnn[name]["auroc"]
            per[name] = row
        out["per_finding"] = per
    for gname, g in result["groups"].items():
        rows = {}
        for name, s in g["systems"].items():
            row = {m: {"value": s["zero_shot"]["macro"][m]["value"], "ci": s["zero_shot"]["macro"][m]["ci"]}
                   for m in M.METRICS}
            if "retrieval" in s:
                row["recall"] = {str(k): [v["recall"], v["random"]] for k, v in s["retrieval"]["query_to_ct"]["k"].items()}
            if "dictation" in s:
                row["dictation_macro_f1"] = s["dictation"]["macro_f1"]
            row["n"] = s["n"]
            rows[name] = row
        out["groups"][gname] = {"n": g["n"], "systems": rows,
                                "paired": {k: {m: v[m] for m in ("auroc", "f1")} for k, v in g["paired"].items()}}
    return out


def bundle_thresholds(run: str | Path, bundle_tensors: dict | None = None, manifest: dict | None = None, *,
                      data: str | Path | None = None, evaluation: str | Path | None = None) -> tuple[dict | None, dict | None]:
    """``(thresholds section, evaluation section)`` for ``train.export``.

    Uses ``evaluation`` (an ``evaluation.json``) or ``<run>/evaluation/evaluation.json`` when present:
    thresholds = the text teacher's ROC-corner thresholds on the whole split (the bundle's prompts
    are the teacher's text prompts; the CT encoder is the teacher's). Otherwise, with ``data`` (a folder with ``ct-rate/``),
    chooses them on the valid split with the run's teacher and its text prompts, without the
    speech rows. Returns ``(None, None)`` when neither is available.
    """
    run = Path(run)
    path = Path(evaluation) if evaluation is not None else run / "evaluation" / "evaluation.json"
    if path.is_file():
        result = json.loads(path.read_text())
    elif data is not None and (Path(data) / "ct-rate").is_dir():
        models = models_from_run(run)
        models.speech, models.dictation, models.dictation_frames = {}, {}, {}
        result = evaluate_bundle(models, Path(data) / "ct-rate", None, "valid",
                                 config=EvalConfig(n_boot=200, cascade_n=0), progress=False)
    else:
        return None, None
    zs = result["text_teacher_all"]["zero_shot"]
    if int(result.get("labels_mode", 18)) != 18:
        return None, summary_for_bundle(result)
    thresholds = {"method": f"ROC-corner point of a 100-step grid on [0, 1] (CT-CLIP), chosen on "
                            f"{result['split']} ({zs['threshold_on']}, {zs['n_studies']} studies), text prompts",
                  "values": {k: float(v) for k, v in zs["thresholds"].items()},
                  **gate_auroc(zs)}
    return thresholds, summary_for_bundle(result)


def gate_auroc(zero_shot: dict) -> dict:
    """The ``thresholds`` keys the engine's reliability gate reads (``engine.findings.unchecked``):
    ``auroc`` = each finding's lower bootstrap CI bound of its zero-shot AUROC, ``auroc_statistic`` =
    ``"ci_lower"``, ``auroc_point`` = the point estimates, ``auroc_ci`` = how the bound was drawn.
    Without a finite lower bound for every finding whose AUROC is defined (no bootstrap), ``auroc`` is the
    point estimate and ``auroc_statistic`` says ``"point"``: one statistic for all findings, never a mix."""
    per = {k: v for k, v in zero_shot["per_finding"].items()
           if v.get("auroc") is not None and np.isfinite(v["auroc"])}
    point = {k: float(v["auroc"]) for k, v in per.items()}
    lower = {k: v.get("ci", {}).get("auroc", [float("nan")])[0] for k, v in per.items()}
    if per and all(lo is not None and np.isfinite(lo) for lo in lower.values()):
        return {"auroc": {k: float(min(max(lo, 0.0), 1.0)) for k, lo in lower.items()}, "auroc_statistic": "ci_lower",
                "auroc_point": point,
                "auroc_ci": {"level": float(zero_shot.get("level", 0.95)), "n_boot": int(zero_shot.get("n_boot", 0)),
                             "seed": int(zero_shot.get("seed", 0)), "resampled": "studies, with replacement"}}
    return {"auroc": point, "auroc_statistic": "point"}
