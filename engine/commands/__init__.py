"""Subcommands of ``speechct`` (one module each, see engine.cli)."""
