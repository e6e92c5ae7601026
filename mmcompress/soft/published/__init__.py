"""Published soft-compressor checkpoints loaded as mmcompress compressors.

Each release format (ICAE, 500xCompressor, xRAG, AutoCompressor, GIST) lives in its own module here and registers a
:class:`PublishedFormat`: a name, ``detect(folder)`` that recognises the release's own layout from its files, and
``load(folder, **overrides)`` that maps it onto mmcompress's method of the same name. ``create_compressor(folder)``
tries every registered format on a folder that is not a saved mmcompress compressor.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Format modules, imported on first use so that importing mmcompress stays cheap.
FORMAT_MODULES: tuple[str, ...] = ("xrag", "autocompressor", "gist")


@dataclass(frozen=True)
class PublishedFormat:
    name: str
    detect: Callable[[Path], bool]  # True when the folder is this release's layout
    load: Callable[..., Any]  # (folder, **overrides) -> compressor
    description: str = ""


FORMATS: dict[str, PublishedFormat] = {}


def register_format(fmt: PublishedFormat) -> PublishedFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"published format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def published_formats() -> dict[str, PublishedFormat]:
    for module in FORMAT_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return FORMATS


def detect_format(folder: str | Path) -> PublishedFormat | None:
    """The registered format whose layout ``folder`` has, or None."""
    folder = Path(folder)
    matches = [fmt for fmt in published_formats().values() if fmt.detect(folder)]
    return matches[0] if matches else None
