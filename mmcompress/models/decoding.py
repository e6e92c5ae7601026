"""Greedy decoding on top of a prefilled (and possibly pressed or otherwise shortened) KV cache.

The cache may hold fewer entries than tokens were read (a press evicted some, or only gist/summary entries were
kept), so positions are tracked explicitly: row ``b`` continues at ``next_position[b]``, not at the cache length.
Rows may have different suffixes (questions): they are left-padded and masked, so a whole batch decodes together.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .compat import cache_kwargs as _cache_kwargs
from .compat import new_cache, output_cache


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The cache keyword of ``model`` (looking through a peft wrapper, whose forward takes ``**kwargs``)."""
    return _cache_kwargs(model.get_base_model() if hasattr(model, "get_base_model") else model, cache)


@dataclass
class CachedContext:
    """A KV cache standing in for a context: ``cache_mask`` ``(B, C)`` marks real entries, ``next_position`` ``(B,)``
    is the position of the first token after the context (its original length, whatever the cache holds)."""

    cache: Any
    cache_mask: torch.Tensor
    next_position: torch.Tensor
    context_tokens: list[int] = field(default_factory=list)  # tokens read per row

    @property
    def cache_entries(self) -> int:
        return int(self.cache.get_seq_length())

    def kv_bytes(self) -> int:
        """Bytes held by the cache's keys and values (all layers, the whole batch)."""
        return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in self.cache.layers
                   if getattr(layer, "keys", None) is not None)


@torch.no_grad()
def prefill(model: Any, input_ids: torch.Tensor | None = None, press: Any = None, *,
            inputs_embeds: torch.Tensor | None = None) -> CachedContext:
    """Read ``input_ids`` ``(B, T)`` or ``inputs_embeds`` ``(B, T, D)`` (unpadded) into a fresh cache, compressing
    each layer with ``press`` if given."""
    import contextlib

    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    x = input_ids if input_ids is not None else inputs_embeds
    cache = new_cache(model)
    inputs = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
    with press(model) if press is not None else contextlib.nullcontext():
        model(**inputs, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    batch, length = x.shape[:2]
    entries = int(cache.get_seq_length())
    return CachedContext(cache, torch.ones(batch, entries, dtype=torch.long, device=x.device),
                         torch.full((batch,), length, dtype=torch.long, device=x.device), [length] * batch)


def keep_first_in_cache(cache: Any, n: int) -> None:
    """Drop every entry after the first ``n`` of each layer, in place (``crop``'s signature differs across versions)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > n:
            layer.keys = layer.keys[..., :n, :]
            layer.values = layer.values[..., :n, :]


@dataclass
class Generation:
    token_ids: list[list[int]]
    prefill_seconds: float = 0.0  # reading the suffix (question)
    decode_seconds: float = 0.0
    new_tokens: int = 0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds else 0.0


def left_pad(rows: list[list[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_from_cache(model: Any, context: CachedContext, suffix_ids: list[list[int]], *, max_new_tokens: int = 32,
                        eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
                        restore: bool = True) -> Generation:
    """Greedy-decode after ``context`` and each row's ``suffix_ids``. With ``restore`` the cache is cropped back to
    the context afterwards, so several questions can share one compressed context."""
    device = context.cache_mask.device
    entries = context.cache_entries
    ids, mask = left_pad(suffix_ids, pad_token_id, device)
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    attention = torch.cat([context.cache_mask, mask], dim=1)
    positions = context.next_position[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)
    cache = context.cache
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1,
                **cache_kwargs(model, cache))
    cache = output_cache(out) or cache
    t1 = time.perf_counter()
    next_position = positions[:, -1] + 1
    finished = torch.zeros(len(suffix_ids), dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in suffix_ids]
    steps = 0
    for _ in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        for i, t in enumerate(token.tolist()):
            if not finished[i]:
                if t in eos:
                    finished[i] = True
                else:
                    generated[i].append(t)
        steps += 1
        if bool(finished.all()) or steps == max_new_tokens:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position[:, None],
                    use_cache=True, **cache_kwargs(model, cache))
        cache = output_cache(out) or cache
        next_position = next_position + 1
    t2 = time.perf_counter()
    if restore:
        keep_first_in_cache(cache, entries)
    return Generation(generated, prefill_seconds=t1 - t0, decode_seconds=t2 - t1, new_tokens=sum(map(len, generated)))


@torch.no_grad()
def extend_context(model: Any, context: CachedContext, embeds: torch.Tensor) -> CachedContext:
    """Read ``embeds`` ``(B, T, D)`` after ``context`` (at its next positions) into its cache."""
    batch, length = embeds.shape[:2]
    mask = torch.cat([context.cache_mask, context.cache_mask.new_ones(batch, length)], dim=1)
    positions = context.next_position[:, None] + torch.arange(length, device=embeds.device)[None]
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **cache_kwargs(model, context.cache))
    cache = output_cache(out) or context.cache
    return CachedContext(cache, mask, context.next_position + length, [n + length for n in context.context_tokens])
