"""The engine's version, in a module of its own so that any layer can name it without importing the
package's ``__init__`` (which reaches the runtime)."""

__version__ = "0.1.0"
