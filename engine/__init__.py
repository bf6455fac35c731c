"""SpeechCT engine: the inference library (no Qt, no training code).

Everything the desktop app can do, a script can do through this package.
"""

__version__ = "0.1.0"
