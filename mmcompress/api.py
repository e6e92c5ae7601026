"""The one-line entry point: ``mmcompress.compress(prompt, method=..., rate=...)``."""
from __future__ import annotations

import functools
import json
from typing import Any

from .factory import create_compressor


@functools.lru_cache(maxsize=8)
def _cached(method: str, frozen_overrides: str):
    return create_compressor(method, **json.loads(frozen_overrides))


def compress(
    prompt: Any,
    *,
    method: str = "selective_context",
    rate: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    instruction: str | None = None,
    **config: Any,
):
    """Compress ``prompt`` with ``method`` (a registered name or a YAML config path).

    ``config`` sets fields of the method's config (e.g. ``unit="sentence"``, ``model="gpt2"``). Compressors are
    cached, so repeated calls reuse the loaded model.

        >>> import mmcompress
        >>> result = mmcompress.compress(text, rate=0.5, question="Who won?")   # doctest: +SKIP
        >>> result.text, result.rate                                               # doctest: +SKIP
    """
    try:
        compressor = _cached(method, json.dumps(config, sort_keys=True))
    except TypeError:  # unhashable / non-JSON override (e.g. a model object): build a fresh compressor
        compressor = create_compressor(method, **config)
    return compressor.compress(prompt, rate=rate, target_tokens=target_tokens, question=question, instruction=instruction)
