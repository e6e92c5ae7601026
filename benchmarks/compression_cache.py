"""Compressions cached on disk across benchmark runs (``benchmarks/equal_budget.py --cache``): a rerun repeats only
the reader's work and reports each compression's original seconds. Cache files load with ``weights_only=True`` and
only the result classes and NumPy arrays allowed, so a planted pickle is refused instead of run.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def cache_safe_types() -> list[Any]:
    """The only classes a cached compression may contain: results, prompts, numpy arrays and dtypes. Anything else
    in a cache file (a planted pickle) makes ``torch.load(weights_only=True)`` refuse it instead of running it."""
    from mmcompress.prompt import ImageSegment, Policy, Prompt, Role, TextSegment
    from mmcompress.results import CompressedPrompt, SegmentSelection, SoftSegment

    dtypes = [t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return [CompressedPrompt, SegmentSelection, SoftSegment, Prompt, TextSegment, ImageSegment, Role, Policy,
            (getattr(np, "_core", None) or np.core).multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def load_cached(path: Path) -> tuple[Any, float]:
    """``(value, seconds)`` from a cache file, loaded with ``weights_only=True`` and only :func:`cache_safe_types`."""
    import pickle

    try:
        with torch.serialization.safe_globals(cache_safe_types()):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise SystemExit(f"error: cached compression {path} cannot be loaded safely ({str(e).splitlines()[0][:200]}); "
                         "delete it (or the --cache folder) and run again") from None


class CompressionCache:
    """Compressions on disk, reused across runs: ``folder/<sha1 of the key>.pt`` holds ``(value, seconds)``.

    ``spent`` adds up the seconds each returned value took when it was computed (this run or an earlier one), so
    a cached compression reports its original time. ``folder=None`` caches nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self.spent, self.hits, self.misses = 0.0, 0, 0

    def get(self, key: Any, compute: Any) -> Any:
        path = None
        if self.folder is not None:
            digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
            path = self.folder / f"{digest}.pt"
            if path.is_file():
                value, seconds = load_cached(path)
                self.hits += 1
                self.spent += seconds
                return value
        t0 = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - t0
        self.misses += 1
        self.spent += seconds
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save((value, seconds), path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        return value

    def wrap_hard(self, compressor: Any, fingerprint: dict[str, Any]) -> Any:
        """Cache ``compressor.compress`` (also when a :class:`~mmcompress.Pipeline` calls it) per prompt and rate."""
        original = compressor.compress

        def compress(prompt: Any, **kwargs: Any):
            rate = kwargs.get("rate") or compressor.config.rate
            key = {"hard": compressor.name, "config": fingerprint, "rate": rate, "kwargs": sorted(set(kwargs) - {"rate"}),
                   "prompt": [(s.role.value, s.text) for s in prompt.segments]}
            return self.get(key, lambda: original(prompt, **kwargs))

        compressor.compress = compress
        return compressor

    def wrap_soft(self, compressor: Any, source: dict[str, Any]) -> Any:
        """Cache ``compressor.encode_spans`` (what ``compress`` and pipelines call) per texts and config."""
        original = compressor.encode_spans

        def encode_spans(texts: Any):
            key = {"soft": compressor.name, "source": source, "config": compressor.config.to_dict(), "texts": list(texts)}
            return self.get(key, lambda: original(texts))

        compressor.encode_spans = encode_spans
        return compressor


def weights_source(path: str | Path | None) -> dict[str, Any]:
    """What identifies loaded weights: the path, and the size and time of its weights file."""
    if not path:
        return {"path": None}
    weights = Path(path, "trainable.safetensors")
    stat = weights.stat() if weights.is_file() else None
    return {"path": str(Path(path).resolve()), "size": stat and stat.st_size, "mtime": stat and stat.st_mtime}
