"""Question-focused pooling (mean-pooling's ``question_focus``; off by default): the same number of soft positions
as uniform pooling, spent unevenly - the sentences closest to the question keep more of them.

Uniform pooling gives every group of ``pool_ratio`` tokens one position, so the sentence that holds the answer is
blurred as much as any other. Query-guided compression (Cao et al. 2024, "Retaining Key Information under High
Compression Ratios: Query-Guided Compressor for LLMs") and LongLLMLingua's question-conditioned budgets both spend a
prompt's budget where the question points. Here a frozen sentence encoder (all-MiniLM-L6-v2 by default) ranks the
context's sentences by cosine similarity to the question; the best ones, while they fit in ``question_focus`` of the
span's positions, are pooled at ``focus_ratio`` (1: every token keeps its own key and value); every other run of
tokens shares the remaining positions in proportion to its length (near-equal groups). The span's position count,
and so its ratio, is exactly uniform pooling's: ``sum(ceil(chunk / pool_ratio))`` over its chunks. Groups never cross
a chunk, since each chunk is encoded and pooled on its own.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..text_units import sentence_units
from .pool_groups import group_index


def sentence_of_tokens(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Each token's sentence (:func:`~mmcompress.text_units.sentence_units`), by where its characters start; a
    token without characters (a BOS) or in the whitespace between sentences belongs to the sentence after it."""
    ends = sentence_units(text).spans[:, 1]
    return [int(min(np.searchsorted(ends, start, side="right"), len(ends) - 1)) for start, _ in offsets]


def choose_sentences(scores: Sequence[float], lengths: Sequence[int], positions: int, share: float,
                     focus_ratio: int, pool_ratio: int) -> tuple[set[int], int]:
    """The sentences to focus on, best score first, while their positions fit in ``share`` of ``positions``, and
    the ratio they are pooled at: ``focus_ratio``, or the smallest coarser one (below ``pool_ratio``) at which the
    best sentence alone fits. ``(set(), pool_ratio)`` when none fits: uniform pooling."""
    room = share * positions
    order = sorted(range(len(scores)), key=lambda s: -scores[s])
    for ratio in range(focus_ratio, pool_ratio):
        chosen, used = set(), 0
        for s in order:
            need = math.ceil(lengths[s] / ratio)
            if used + need > room:
                break
            chosen.add(s)
            used += need
        if chosen:
            return chosen, ratio
    return set(), pool_ratio


def focused_groups(focus: Sequence[bool], chunk_sizes: Sequence[int], pool_ratio: int,
                   focus_ratio: int) -> list[list[int]] | None:
    """Per chunk, each token's group: focused runs in groups of ``focus_ratio``, the other runs sharing what is left
    of uniform pooling's position count in proportion to their lengths (at least one position each). None when the
    other runs would get fewer positions than they are runs (the caller pools uniformly)."""
    runs, start = [], 0  # (chunk, first token, length, focused): runs never cross a chunk
    for c, size in enumerate(chunk_sizes):
        for flag, run in itertools.groupby(focus[start : start + size]):
            n = len(list(run))
            runs.append((c, start, n, bool(flag)))
            start += n
    total = sum(math.ceil(size / pool_ratio) for size in chunk_sizes)
    focused = sum(math.ceil(n / focus_ratio) for _, _, n, f in runs if f)
    rest = [r for r in runs if not r[3]]
    left = total - focused
    if left < len(rest):
        return None
    share = allocate(left, [n for _, _, n, _ in rest])
    counts = iter(share)
    groups = [[0] * size for size in chunk_sizes]
    offsets = np.cumsum([0, *chunk_sizes])
    next_group = [0] * len(chunk_sizes)
    for c, first, n, f in runs:
        g = math.ceil(n / focus_ratio) if f else next(counts)
        for k in range(n):  # g near-equal groups over the run's n tokens
            member = k // focus_ratio if f else k * g // n
            groups[c][first - offsets[c] + k] = next_group[c] + member
        next_group[c] += g
    return groups


def allocate(positions: int, lengths: Sequence[int]) -> list[int]:
    """``positions`` split over runs of ``lengths`` tokens in proportion to them (largest remainders), each run at
    least one position and at most one per token."""
    if not lengths:
        return []
    total = sum(lengths)
    exact = [positions * n / total for n in lengths]
    share = [min(n, max(1, int(e))) for n, e in zip(lengths, exact)]
    by_remainder = sorted(range(len(lengths)), key=lambda i: share[i] - exact[i])
    while sum(share) < positions and any(share[i] < lengths[i] for i in by_remainder):
        for i in by_remainder:
            if sum(share) < positions and share[i] < lengths[i]:
                share[i] += 1
    while sum(share) > positions:  # the floor of one position each overshot: take from the largest
        i = max(range(len(share)), key=lambda k: share[k])
        share[i] -= 1
    return share


def group_tensor(own: torch.Tensor, pool_ratio: int, layouts: Sequence[Sequence[int] | None]) -> torch.Tensor:
    """``[N, W]`` pooling groups of left-padded chunks (``own``: their own tokens): each chunk's ``layouts`` entry
    (one group per own token), or uniform groups of ``pool_ratio`` where it is None; -1 outside the own tokens."""
    groups, _ = group_index(own, pool_ratio)
    width = own.shape[1]
    for n, layout in enumerate(layouts):
        if layout is not None:
            groups[n, width - len(layout) :] = torch.tensor(list(layout), dtype=groups.dtype)
    return groups


class QuestionFocus:
    """Ranks each context's sentences against its question with a frozen sentence encoder, and lays out the
    groups that :class:`~mmcompress.soft.meanpool.MeanPoolModel` pools (see the module docstring)."""

    def __init__(self, encoder: str, share: float, focus_ratio: int, pool_ratio: int):
        self.encoder_name, self.share = encoder, share
        self.focus_ratio, self.pool_ratio = focus_ratio, pool_ratio
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from .sentence_encoder import SentenceEncoder

            self._encoder = SentenceEncoder(self.encoder_name, normalize=True)
        return self._encoder

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.encoder
        batch = enc.tokenizer(list(texts), max_length=enc.max_tokens, truncation=True, padding=True,
                              return_tensors="pt")
        return enc(batch["input_ids"], batch["attention_mask"])

    def token_focus(self, text: str, question: str, offsets: Sequence[tuple[int, int]],
                    positions: int) -> tuple[list[bool], int]:
        """Which tokens of ``text`` (``offsets``: their character spans) the question focuses on, and the ratio they
        are pooled at; ``positions``: the span's position count under uniform pooling."""
        sentence = sentence_of_tokens(text, offsets)
        strings = sentence_units(text).strings()
        scores = (self.embed(strings) @ self.embed([question])[0]).tolist()
        lengths = np.bincount(sentence, minlength=len(strings)).tolist()
        chosen, ratio = choose_sentences(scores, lengths, positions, self.share, self.focus_ratio, self.pool_ratio)
        return [s in chosen for s in sentence], ratio

    def groups(self, texts: Sequence[str], questions: Sequence[str | None],
               offsets: Sequence[Sequence[tuple[int, int]]], chunk_sizes: Sequence[Sequence[int]]) -> list[list[int] | None]:
        """Per chunk of every text (in order), its tokens' groups, or None where that text pools uniformly (also
        where it has no question: there is nothing to focus on)."""
        out: list[list[int] | None] = []
        for text, question, text_offsets, sizes in zip(texts, questions, offsets, chunk_sizes):
            if not (question or "").strip():
                out += [None] * len(sizes)
                continue
            positions = sum(math.ceil(n / self.pool_ratio) for n in sizes)
            focus, ratio = self.token_focus(text, question, text_offsets, positions)
            layout = focused_groups(focus, sizes, self.pool_ratio, ratio) if any(focus) else None
            out += layout if layout is not None else [None] * len(sizes)
        return out
