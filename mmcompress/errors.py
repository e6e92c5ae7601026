"""Exceptions raised by mmcompress.

Every error a user can cause by bad input derives from :class:`MMCompressError`, so callers (and the CLI,
which turns them into a one-line message and exit code 2) can tell them apart from bugs.
"""
from __future__ import annotations


class MMCompressError(Exception):
    """Base class of all errors caused by bad input or a missing asset."""


class InvalidPromptError(MMCompressError, ValueError):
    """The prompt is empty, malformed, or its images do not match its ``<image>`` markers."""


class BudgetError(MMCompressError, ValueError):
    """The rate or token budget is out of range or cannot be met (e.g. it is below the kept segments)."""


class UnknownCompressorError(MMCompressError, KeyError):
    """No compressor (or config) is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConfigError(MMCompressError, ValueError):
    """A config file or field is invalid."""


class ModelNotFoundError(MMCompressError, OSError):
    """A model could not be found locally and could not (or may not) be downloaded."""


class ImageError(MMCompressError, ValueError):
    """An image cannot be read or converted."""


class InputFileError(MMCompressError, OSError):
    """An input file cannot be read or is not UTF-8 text."""


class RandomWeightsWarning(UserWarning):
    """A result depends on weights that were never trained (e.g. patches ranked by a randomly initialised encoder)."""
