"""Attention sinks (StreamingLLM, Xiao et al. 2023) and the plain sliding window: keep the first ``n_sink`` entries
and the most recent ones. ``SlidingWindowPress`` is the same with no sinks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import KVPress, register_press


@register_press("streaming_llm")
@dataclass
class StreamingLLMPress(KVPress):
    """``n_sink`` first entries (the attention sinks) plus the ``n_kept - n_sink`` most recent."""

    n_sink: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.n_sink) < 0:
            raise ConfigError(f"n_sink must be >= 0, got {self.n_sink}")

    def score(self, module, hidden_states, keys, values, kwargs):
        batch, heads, length = keys.shape[:3]
        kept = self.n_kept(length)
        sinks = min(int(self.n_sink), kept)
        position = torch.arange(length, device=keys.device, dtype=torch.float32)
        # recent entries score by recency; sinks score above everything
        scores = torch.where(position < sinks, torch.full_like(position, 2.0 * length), position)
        return scores.expand(batch, heads, length)


@register_press("sliding_window")
@dataclass
class SlidingWindowPress(StreamingLLMPress):
    """Keep only the most recent entries."""

    n_sink: int = 0
