"""Truncation: keep a contiguous part of the compressible text. ``remove`` names the part that goes:
``"tail"`` keeps the beginning, ``"head"`` keeps the end, ``"middle"`` keeps both ends (LongBench-style)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import HardCompressor, HardConfig, Request, SegmentOutcome, allocate, keep_whole, unit_outcome
from ..errors import ConfigError
from ..prompt import Policy
from ..registry import register_compressor
from ..text_units import token_units


@dataclass
class TruncateConfig(HardConfig):
    remove: str = "tail"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.remove not in ("head", "tail", "middle"):
            raise ConfigError(f"remove must be 'head', 'tail' or 'middle', got {self.remove!r}")


@register_compressor("truncate")
class Truncate(HardCompressor):
    """Drop tokens from the head, the tail or the middle of the compressible text, all segments taken as one."""

    config_class = TruncateConfig

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        segments = request.text_segments
        units = []
        for s in segments:
            if s.policy is Policy.KEEP:
                units.append(None)
                continue
            units.append(token_units(s.text, self.tokenize_with_offsets([s.text])[0][1]))
        # positions run across segments, so the head/tail/middle is that of the whole compressible text
        total = sum(len(u) for u in units if u is not None)
        position = np.arange(total, dtype=np.float64)
        if self.config.remove == "tail":
            order = -position
        elif self.config.remove == "head":
            order = position
        else:
            order = np.abs(position - (total - 1) / 2)
        scores, start = [], 0
        for u in units:
            if u is None:
                scores.append(None)
            else:
                scores.append(order[start : start + len(u)])
                start += len(u)
        with request.timings("select"):
            masks = allocate(request, scores, [None if u is None else np.ones(len(u)) for u in units])
        return [keep_whole(s) if u is None else unit_outcome(u, m, "token", sc)
                for s, u, m, sc in zip(segments, units, masks, scores)]
