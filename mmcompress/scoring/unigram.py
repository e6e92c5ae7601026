"""The no-model fallback: self-information of words from their corpus frequency, ``-log p(word)``.

Frequencies come from the ``wordfreq`` package (an aggregate of many corpora). Context is ignored, so this is what
a causal LM's score reduces to with no context at all: cheap, deterministic, and a reasonable floor.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import numpy as np

from .causal_lm import TokenScores

_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
PUNCTUATION_FREQUENCY = 1e-2  # wordfreq has no entries for punctuation; treat it as very common (uninformative)


class UnigramScorer:
    """Word-level self-information from ``wordfreq`` (``lang`` is any language wordfreq knows)."""

    def __init__(self, lang: str = "en", minimum: float = 1e-9):
        try:
            import wordfreq  # noqa: F401
        except ImportError as e:  # pragma: no cover - a dependency
            raise ImportError("the unigram scorer needs wordfreq: pip install wordfreq") from e
        self.lang = lang
        self.minimum = minimum

    @functools.lru_cache(maxsize=200_000)  # noqa: B019 - the scorer lives as long as its compressor
    def word_information(self, word: str) -> float:
        from wordfreq import word_frequency

        if not any(c.isalnum() for c in word):
            return -math.log(PUNCTUATION_FREQUENCY)
        return -math.log(max(word_frequency(word, self.lang), self.minimum))

    def self_information(self, texts: Sequence[str], prefix: str | Sequence[str] | None = None) -> list[TokenScores]:
        """Per-word ``-log p(word)`` for each text; ``prefix`` is accepted for interface parity and ignored."""
        out = []
        for text in texts:
            matches = list(_TOKEN.finditer(text))
            offsets = np.asarray([(m.start(), m.end()) for m in matches], dtype=np.int64).reshape(-1, 2)
            scores = np.asarray([self.word_information(m.group(0)) for m in matches], dtype=np.float32)
            out.append(TokenScores(np.full(len(matches), -1, dtype=np.int64), offsets, scores))
        return out
