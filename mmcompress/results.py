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

    def to_html(self, title: str | None = None) -> str:
        """A standalone HTML page: the original segments with kept units highlighted and dropped ones struck
        through (see :mod:`mmcompress.html_view`)."""
        from .html_view import compressed_prompt_html

        return compressed_prompt_html(self, title)

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


# ------------------------------------------------------------------------------------------------ soft results
@dataclass
class SoftSegment:
    """One span of a prompt compressed into ``K`` soft tokens.

    Exactly one of the two forms is set, depending on how the method feeds its decoder:

    - ``embeddings`` ``[K, D]``: soft tokens in the decoder's input-embedding space (icae, xrag, gist...), placed in
      the decoder's ``inputs_embeds``;
    - ``kv``: per-layer ``(keys, values)``, each ``[H_kv, K, d_head]`` (kv / 500xCompressor), handed to the decoder
      as its cache. Keys are stored rotated as if the span sat at positions ``0..K-1``; the decoder-side code
      re-rotates them to where the span lands in the prompt.

    An encoder-decoder method (``gist_t5``) sets ``kv`` (the span's keys/values in the encoder's self-attention)
    and ``encoder_states`` ``[K, D]``, the span's encoder outputs that the decoder cross-attends to.

    ``origin_tokens`` counts the text the span replaces (in the compressor's tokenizer); ``chunks`` says how many
    encoder chunks of at most ``chunk_tokens`` it was split into (multi-span). ``chunk_layout`` (methods that encode
    each chunk on its own: icae, kv, meanpool): ``(tokens, soft tokens)`` of each chunk in order, so a decoder can
    read one chunk at a time (``reconstruct``); None when the span is one unit.
    """

    embeddings: Any = None
    kv: tuple[tuple[Any, Any], ...] | None = None
    origin_tokens: int = 0
    chunks: int = 1
    role: str = "context"
    text: str | None = None  # the original text (kept for reconstruction metrics; None when not wanted)
    encoder_states: Any = None  # encoder-decoder methods: the span's encoder outputs [K, D] (with kv)
    chunk_layout: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if (self.embeddings is None) == (self.kv is None):
            raise ValueError("a SoftSegment holds either embeddings [K, D] or per-layer kv, exactly one of them")

    @property
    def num_tokens(self) -> int:
        """K: how many soft tokens (or cache positions) the span occupies in the decoder."""
        return int(self.embeddings.shape[0]) if self.embeddings is not None else int(self.kv[0][0].shape[-2])

    @property
    def kind(self) -> str:
        return "embeddings" if self.embeddings is not None else "kv"

    def to(self, device: Any) -> SoftSegment:
        import dataclasses as _dc

        if self.embeddings is not None:
            return _dc.replace(self, embeddings=self.embeddings.to(device))
        states = None if self.encoder_states is None else self.encoder_states.to(device)
        return _dc.replace(self, kv=tuple((k.to(device), v.to(device)) for k, v in self.kv), encoder_states=states)


Piece = Any  # a TextSegment kept verbatim, or a SoftSegment


@dataclass
class SoftPrompt:
    """The result of a soft compressor: a batch of ``B`` prompts, each an ordered mix of text and soft pieces.

    ``items[b]`` is the ordered list of pieces of prompt ``b``: :class:`~mmcompress.prompt.TextSegment` (kept as
    text, e.g. an instruction or question) and :class:`SoftSegment` (compressed spans, e.g. documents). A prompt that
    was a single text is one SoftSegment. ``origin_tokens[b]`` counts the whole original prompt, ``compressed_tokens[b]``
    the decoder positions it now takes (soft tokens + kept text tokens), both in the compressor's tokenizer.

    Convenience views: :attr:`embeddings` ``[B, K, D]`` (the soft tokens of each prompt concatenated, right-padded)
    with :attr:`soft_mask` ``[B, K]``; ``soft_prompt[b]`` is a one-prompt SoftPrompt.
    """

    items: list[list[Piece]]
    method: str
    origin_tokens: list[int]
    compressed_tokens: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SoftPrompt:
        if isinstance(index, slice):
            return SoftPrompt(self.items[index], self.method, self.origin_tokens[index], self.compressed_tokens[index],
                              dict(self.timings), dict(self.extras))
        index = range(len(self.items))[index]
        return SoftPrompt([self.items[index]], self.method, [self.origin_tokens[index]],
                          [self.compressed_tokens[index]], dict(self.timings), dict(self.extras))

    @classmethod
    def concat(cls, prompts: list[SoftPrompt]) -> SoftPrompt:
        """Join several SoftPrompts of one method into one batch."""
        if not prompts:
            raise ValueError("nothing to concatenate")
        out = cls([], prompts[0].method, [], [], {}, {})
        for p in prompts:
            if p.method != out.method:
                raise ValueError(f"cannot batch soft prompts of {p.method!r} with {out.method!r}")
            out.items += p.items
            out.origin_tokens += p.origin_tokens
            out.compressed_tokens += p.compressed_tokens
            for k, v in p.timings.items():
                out.timings[k] = out.timings.get(k, 0.0) + v
        return out

    def soft_segments(self, index: int = 0) -> list[SoftSegment]:
        return [p for p in self.items[index] if isinstance(p, SoftSegment)]

    @property
    def soft_tokens(self) -> list[int]:
        """Soft tokens per prompt (all its compressed spans together)."""
        return [sum(s.num_tokens for s in item if isinstance(s, SoftSegment)) for item in self.items]

    @property
    def embeddings(self):
        """``[B, K_max, D]``: each prompt's soft embeddings concatenated in order, right-padded with zeros."""
        import torch

        per_item = [[s.embeddings for s in item if isinstance(s, SoftSegment)] for item in self.items]
        if any(s.kv is not None for item in self.items for s in item if isinstance(s, SoftSegment)):
            raise AttributeError(f"{self.method} soft prompts are per-layer keys/values; use .items[b][i].kv")
        flat = [torch.cat(x, 0) if x else None for x in per_item]
        ref = next(x for x in flat if x is not None)
        width = max(0 if x is None else x.shape[0] for x in flat)
        out = ref.new_zeros(len(flat), width, ref.shape[-1])
        for b, x in enumerate(flat):
            if x is not None:
                out[b, : x.shape[0]] = x
        return out

    @property
    def soft_mask(self):
        """``[B, K_max]`` bool: which rows of :attr:`embeddings` are real soft tokens."""
        import torch

        counts = self.soft_tokens
        return torch.arange(max(counts) if counts else 0)[None, :] < torch.tensor(counts)[:, None]

    @property
    def origin_total(self) -> int:
        return int(sum(self.origin_tokens))

    @property
    def compressed_total(self) -> int:
        return int(sum(self.compressed_tokens))

    @property
    def rate(self) -> float:
        return self.compressed_total / self.origin_total if self.origin_total else 1.0

    @property
    def ratio(self) -> float:
        return self.origin_total / self.compressed_total if self.compressed_total else float("inf")

    def to(self, device: Any) -> SoftPrompt:
        items = [[p.to(device) if isinstance(p, SoftSegment) else p for p in item] for item in self.items]
        return SoftPrompt(items, self.method, list(self.origin_tokens), list(self.compressed_tokens),
                          dict(self.timings), dict(self.extras))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (tensors are described by shape, not dumped)."""
        def piece(p):
            if isinstance(p, SoftSegment):
                return {"kind": p.kind, "soft_tokens": p.num_tokens, "origin_tokens": p.origin_tokens,
                        "chunks": p.chunks, "role": p.role}
            return {"kind": "text", "role": p.role.value, "text": p.text}

        out = {
            "method": self.method,
            "origin_tokens": self.origin_total,
            "compressed_tokens": self.compressed_total,
            "rate": round(self.rate, 6),
            "ratio": round(self.ratio, 6) if np.isfinite(self.ratio) else None,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "prompts": [{"origin_tokens": o, "compressed_tokens": c, "pieces": [piece(p) for p in item]}
                        for item, o, c in zip(self.items, self.origin_tokens, self.compressed_tokens)],
        }
        if self.extras:
            out["extras"] = _jsonable(self.extras)
        return out

    def __repr__(self) -> str:
        return (f"SoftPrompt(method={self.method!r}, batch={len(self)}, tokens={self.origin_total}->"
                f"{self.compressed_total}, ratio={self.ratio:.2f}x)")
