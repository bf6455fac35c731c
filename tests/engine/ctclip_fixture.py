"""Where the CT-CLIP golden fixture lives: ``tests/fixtures/ctclip-tiny`` (a copy committed so
that CI on a clean clone runs the golden tests; ``SPEECHCT_SHARED`` points at another shared folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.models.ct import CTEncoderConfig

_SHARED = Path(os.environ.get("SPEECHCT_SHARED", Path(__file__).resolve().parents[1]))
FIXTURES = _SHARED / "fixtures" / "ctclip-tiny"
needs_fixture = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"{FIXTURES} not present")


def tiny_config(**changes) -> CTEncoderConfig:
    """The fixture's CTViT settings (ctclip_tiny_config.json) as our config."""
    raw = json.loads((FIXTURES / "ctclip_tiny_config.json").read_text())
    v = raw["ctvit"]
    _, _, z, y, x = raw["input_shape"]
    cfg = CTEncoderConfig(name="ctclip-tiny", input_size=(z, y, x), patch_size=v["patch_size"],
                          temporal_patch_size=v["temporal_patch_size"], dim=v["dim"],
                          spatial_depth=v["spatial_depth"], temporal_depth=v["temporal_depth"],
                          heads=v["heads"], dim_head=v["dim_head"], codebook_size=v["codebook_size"],
                          latent_dim=raw["to_visual_latent"][0], pooling="ctclip")
    return cfg.replace(**changes)
