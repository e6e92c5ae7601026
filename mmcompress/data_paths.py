"""Data files named by recipes and settings. The library names no data folder of its own: a recipe or setting carries
the path (e.g. ``../shared/data/corpus_wiki_news.txt``, which works from the repository), and this finds it."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def resolve_data_path(path: str | Path) -> Path:
    """A data path as written in a recipe: as is, or relative to the working folder or any folder above it (so
    ``../shared/data/x`` works from the repository and from a worktree beside it); ``$MMCOMPRESS_SHARED`` stands for
    a ``shared`` folder given that way."""
    path = Path(path).expanduser()
    if path.exists():
        return path
    stripped = Path(*[p for p in path.parts if p != ".."]) if not path.is_absolute() else path
    candidates = [folder / stripped for folder in [Path.cwd(), *Path.cwd().parents]]
    if os.environ.get("MMCOMPRESS_SHARED") and stripped.parts[:1] == ("shared",):
        candidates.insert(0, Path(os.environ["MMCOMPRESS_SHARED"]).joinpath(*stripped.parts[1:]))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ConfigError(f"data file not found: {path}")
