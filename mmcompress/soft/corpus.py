"""Plain-text training data for the gist and autocompressor tasks: documents from a text file (blank-line
separated), tokenized once."""
from __future__ import annotations

from typing import Any

from ..data_paths import resolve_data_path
from ..errors import ConfigError

DEFAULT_CORPUS = "../shared/data/corpus_wiki_news.txt"  # the recipe's data.corpus setting, found from the repository


def corpus_documents(path: str, tokenizer: Any, min_tokens: int, max_documents: int | None = None) -> list[list[int]]:
    """Token ids of every document with at least ``min_tokens`` tokens."""
    text = resolve_data_path(path).read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    out = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens:
            out.append(ids)
        if max_documents is not None and len(out) >= max_documents:
            break
    if len(out) < 2:
        raise ConfigError(f"{len(out)} document(s) in {path} have {min_tokens} tokens or more; training holds the "
                          "last documents out for evaluation and needs at least 2 (documents are blank-line separated)")
    return out
