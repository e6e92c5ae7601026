"""Plain-text training data for the gist and autocompressor tasks: documents from a text file (blank-line
separated), tokenized once."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULT_CORPUS = "data/corpus_wiki_news.txt"  # under the shared folder


def shared_path(path: str) -> Path:
    """``path`` as given if it exists, else under ``$MMCOMPRESS_SHARED`` (default ``../shared``)."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    shared = Path(os.environ.get("MMCOMPRESS_SHARED", "../shared")) / path
    if shared.exists():
        return shared
    raise ConfigError(f"training corpus {path!r} not found (also looked in {shared}); set data.corpus to a text file")


def corpus_documents(path: str, tokenizer: Any, min_tokens: int, max_documents: int | None = None) -> list[list[int]]:
    """Token ids of every document with at least ``min_tokens`` tokens."""
    text = shared_path(path).read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    out = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens:
            out.append(ids)
        if max_documents is not None and len(out) >= max_documents:
            break
    if not out:
        raise ConfigError(f"no document in {path} has {min_tokens} tokens or more")
    return out
