"""Frozen entry point of both programs in the bundle.

Started as ``speechct`` (a symlink to the one executable on Linux and macOS, a second executable on
Windows) it is the engine's command line (``engine.cli:main``); under any other name it is the
desktop app (``desktop.app:main``), as the console scripts in pyproject.toml define them.
"""

import os
import sys


def program(argv0: str) -> str:
    """``"cli"`` when started as ``speechct`` (any folder, any case, with or without ``.exe``), else ``"app"``."""
    name = os.path.basename(argv0).lower()
    if name.endswith(".exe"):
        name = name[: -len(".exe")]
    return "cli" if name == "speechct" else "app"


if __name__ == "__main__":
    if program(sys.argv[0]) == "cli":
        from engine.cli import main
    else:
        from desktop.app import main
    sys.exit(main())
