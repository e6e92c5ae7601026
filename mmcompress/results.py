"""Result dataclasses: numbers, not formatted strings.

:class:`CompressedPrompt` is what every hard (token-dropping) method returns: the shorter prompt, which units of
each original segment were kept, token counts in the scorer's tokenizer (and optionally in the tokenizer of the LLM
the prompt is for), the achieved rate and ratio, and where the time went.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .prompt import ImageSegment, Prompt


@dataclass
class SegmentSelection:
    """Which units of one original segment survived.

    ``spans`` are character spans ``(n, 2)`` of the units in the original segment text; ``kept`` is a boolean mask
    over them; ``unit`` names the granularity (token, phrase, sentence, document, ...).
    """

    unit: str
    spans: np.ndarray
    kept: np.ndarray

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.kept)

    @classmethod
    def whole(cls, text: str, kept: bool, unit: str = "segment") -> SegmentSelection:
        spans = np.asarray([[0, len(text)]], dtype=np.int64) if text else np.zeros((0, 2), dtype=np.int64)
        return cls(unit, spans, np.full(len(spans), kept, dtype=bool))


@dataclass
class CompressedPrompt:
    """The result of a hard compressor.

    ``selections[i]`` describes original segment ``i`` (``None`` for images, which text methods pass through).
    ``origin_tokens`` / ``compressed_tokens`` count the rendered prompt text in the scorer's tokenizer;
    ``target_*`` count it in the target model's tokenizer when one was given. ``rate`` = compressed / original
    (fraction kept), ``ratio`` = original / compressed (e.g. 4.0 for "4x").
    """

    prompt: Prompt
    original: Prompt
    selections: list[SegmentSelection | None]
    origin_tokens: int
    compressed_tokens: int
    method: str
    target_origin_tokens: int | None = None
    target_compressed_tokens: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prompt.text

    @property
    def segments(self):
        return self.prompt.segments

    @property
    def rate(self) -> float:
        return self.compressed_tokens / self.origin_tokens if self.origin_tokens else 1.0

    @property
    def ratio(self) -> float:
        return self.origin_tokens / self.compressed_tokens if self.compressed_tokens else float("inf")

    @property
    def saved_tokens(self) -> int:
        return self.origin_tokens - self.compressed_tokens

    @property
    def target_rate(self) -> float | None:
        if not self.target_origin_tokens or self.target_compressed_tokens is None:
            return None
        return self.target_compressed_tokens / self.target_origin_tokens

    def to_messages(self) -> list[dict[str, Any]]:
        return self.prompt.to_messages()

    def to_dict(self, include_original: bool = False) -> dict[str, Any]:
        """JSON-ready summary (numbers stay numbers)."""
        out: dict[str, Any] = {
            "method": self.method,
            "compressed_prompt": self.text,
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "rate": round(self.rate, 6),
            "ratio": round(self.ratio, 6) if np.isfinite(self.ratio) else None,
            "saved_tokens": self.saved_tokens,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "segments": [_segment_dict(s, sel) for s, sel in zip(self.original.segments, self.selections)],
        }
        if self.target_origin_tokens is not None:
            out["target_origin_tokens"] = self.target_origin_tokens
            out["target_compressed_tokens"] = self.target_compressed_tokens
            out["target_rate"] = round(self.target_rate, 6) if self.target_rate is not None else None
        if include_original:
            out["original_prompt"] = self.original.text
        if self.extras:
            out["extras"] = _jsonable(self.extras)
        return out

    def __repr__(self) -> str:
        return (
            f"CompressedPrompt(method={self.method!r}, tokens={self.origin_tokens}->{self.compressed_tokens}, "
            f"rate={self.rate:.3f}, ratio={self.ratio:.2f}x, text={self.text[:60]!r}...)"
        )


def _segment_dict(segment, selection: SegmentSelection | None) -> dict[str, Any]:
    if isinstance(segment, ImageSegment) or selection is None:
        return {"kind": "image"}
    return {
        "role": segment.role.value,
        "policy": segment.policy.value,
        "unit": selection.unit,
        "units": int(len(selection.kept)),
        "kept_units": int(selection.kept.sum()),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
