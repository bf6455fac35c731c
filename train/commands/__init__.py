"""Subcommands of ``speechct-train`` (one module each, see :mod:`train.cli`)."""
