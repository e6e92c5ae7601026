"""Random drop: keep a random subset of units under the budget (seeded). The floor every method must beat."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import HardCompressor, HardConfig, Request, SegmentOutcome, allocate, keep_whole, unit_outcome
from ..errors import ConfigError
from ..prompt import Policy
from ..registry import register_compressor
from ..text_units import token_units, units_for


@dataclass
class RandomConfig(HardConfig):
    """``unit``: token | word | sentence. Only ``model``'s tokenizer is loaded (for token units and counting)."""

    unit: str = "token"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in ("token", "word", "phrase", "sentence"):
            raise ConfigError(f"unit must be token, word, phrase or sentence, got {self.unit!r}")


@register_compressor("random")
class RandomDrop(HardCompressor):
    """Keep random units until the budget is used; the same seed and prompt give the same output."""

    config_class = RandomConfig

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        rng = np.random.default_rng(self.config.seed)
        segments = request.text_segments
        units = []
        for k, s in enumerate(segments):
            if s.policy is Policy.KEEP:
                units.append(None)
                continue
            offsets = self.tokenize_with_offsets([s.text])[0][1]
            found = token_units(s.text, offsets) if self.config.unit == "token" else units_for(self.config.unit, s.text)
            units.append(request.split(k, found, offsets)[0])
        scores = [None if u is None else rng.random(len(u)) for u in units]
        costs = [None if u is None else _unit_costs(self, u) for u in units]
        with request.timings("select"):
            masks = allocate(request, scores, costs)
        return [keep_whole(s) if u is None else unit_outcome(u, m, self.config.unit, sc)
                for s, u, m, sc in zip(segments, units, masks, scores)]


def _unit_costs(compressor: HardCompressor, units) -> np.ndarray:
    """Tokens per unit in the compressor's tokenizer (1 per token unit; counted for longer units)."""
    if compressor.config.unit == "token":
        return np.ones(len(units))
    return np.asarray(compressor.count_tokens(units.strings()), dtype=np.float64)
