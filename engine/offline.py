"""The environment that keeps the Hugging Face libraries off the network.

They read these variables once (at import) or at each load, so ``keep_offline()`` runs when ``engine`` is
imported, before anything can import transformers or huggingface_hub. ``setdefault``: a user's explicit
setting wins.

- ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``: every model comes from a package or a bundle on disk.
- ``USE_HUB_KERNELS=NO``: transformers >= 5.2x "kernelizes" a model in ``from_pretrained`` by default with
  code fetched from the Hub; an offline app must not, and the text tower must compute what it computed in
  training.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_HUB_KERNELS": "NO"}


def keep_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
