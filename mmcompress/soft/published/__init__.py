"""Published soft-compressor checkpoints loaded as mmcompress compressors.

Each release format (ICAE, 500xCompressor, xRAG, AutoCompressor, GIST) lives in its own module here and registers a
:class:`PublishedFormat`: a name, ``detect(folder)`` that recognises the release's own layout from its files, and
``load(folder, **overrides)`` that maps it onto mmcompress's method of the same name. ``create_compressor(folder)``
tries every registered format on a folder that is not a saved mmcompress compressor;
``create_compressor(method, checkpoint=<file or folder>, model=<base>)`` loads a release that is weights on top of a
base model (:func:`load_checkpoint`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Format modules, imported on first use so that importing mmcompress stays cheap.
FORMAT_MODULES: tuple[str, ...] = ("icae", "xcompressor500", "xrag", "autocompressor", "gist")
# method name -> the published format whose checkpoints load as that method (when the names differ)
METHOD_FORMATS: dict[str, str] = {"kv": "500xcompressor"}


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


def load_checkpoint(method: str, checkpoint: Any, **overrides: Any):
    """``create_compressor(method, checkpoint=...)``: the published format of ``method`` loads ``checkpoint`` (a local
    file or folder, or ``org/name/file`` on the Hugging Face hub)."""
    from ...errors import ConfigError
    from ...hub import resolve_checkpoint

    formats = published_formats()
    fmt = formats.get(METHOD_FORMATS.get(method, method))
    if fmt is None:
        raise ConfigError(f"{method!r} has no published checkpoint format; formats: {', '.join(formats) or 'none'}")
    return fmt.load(resolve_checkpoint(checkpoint), **overrides)
