"""SpeechCT engine: the inference library (no Qt, no training code).

Everything the desktop app can do, a script can do through this package.
"""

from engine.offline import keep_offline

keep_offline()  # before anything can import transformers / huggingface_hub

from engine.version import __version__  # noqa: E402,F401


def __getattr__(name: str):
    # `engine.Engine` without importing torch for commands that never need it (PEP 562).
    if name == "Engine":
        from engine.runtime import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
