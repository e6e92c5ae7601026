"""How soft methods cut text for their encoder: ICAE's multi-span chunks (``n = ceil(T / L)`` chunks of near-equal
length), the left-padded chunk batch, the split back into spans, and the ids of the task markers."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TASK_IDS = {"ae": 0, "lm": 1, "qa": 2}  # marker rows: ICAE's [AE], [LM] and [FT] tokens


def split_into_chunks(ids: Sequence[int], chunk_tokens: int) -> list[list[int]]:
    """ICAE multi-span: ``n = ceil(T / L)`` chunks of near-equal length ``ceil(T / n)`` (an empty input: one empty)."""
    ids = list(ids)
    if not ids:
        return [[]]
    n = math.ceil(len(ids) / chunk_tokens)
    size = math.ceil(len(ids) / n)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@dataclass
class Chunks:
    """A batch of chunks ready for the encoder (left-padded).

    ``ids`` ``[N, L]``, ``mask`` ``[N, L]``; ``span`` ``[N]`` says which span (input text) each chunk belongs to and
    ``index`` ``[N]`` its position within that span; ``spans`` is the number of spans, ``lengths`` the token count
    of each span. ``pool_mask`` ``[N, L]`` (question-aware encoders): the chunk's own tokens, after the question the
    encoder reads before them; None when every real token is the chunk's. ``sizes`` ``[N]``: each chunk's own token
    count (None when the batch was not built by :func:`make_chunks`, e.g. in training). ``groups`` ``[N, L]``
    (mean-pooling with ``question_focus``): the pooling group of each own token, -1 elsewhere; None: uniform groups.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    span: torch.Tensor
    index: torch.Tensor
    lengths: list[int]
    pool_mask: torch.Tensor | None = None
    sizes: list[int] | None = None
    groups: torch.Tensor | None = None

    def rows(self, part: slice) -> Chunks:
        """The chunks ``part`` of this batch (span lengths unchanged)."""
        pool = None if self.pool_mask is None else self.pool_mask[part]
        sizes = None if self.sizes is None else self.sizes[part]
        groups = None if self.groups is None else self.groups[part]
        return Chunks(self.ids[part], self.mask[part], self.span[part], self.index[part], self.lengths, pool, sizes,
                      groups)

    @property
    def own_mask(self) -> torch.Tensor:
        """``[N, L]``: the positions holding the chunks' own tokens (the question before them excluded)."""
        return self.mask if self.pool_mask is None else self.pool_mask

    @property
    def spans(self) -> int:
        return len(self.lengths)

    def chunks_per_span(self) -> list[int]:
        return torch.bincount(self.span, minlength=self.spans).tolist()

    def own_sizes_per_span(self) -> list[list[int]]:
        """Per span, the own token count of each of its chunks, in order (a BOS included)."""
        sizes: list[list[int]] = [[] for _ in range(self.spans)]
        for span, size in zip(self.span.tolist(), self.own_mask.sum(1).tolist()):
            sizes[span].append(size)
        return sizes


def make_chunks(token_ids: Sequence[Sequence[int]], chunk_tokens: int, pad_id: int, pad_to: int = 0,
                prefixes: Sequence[Sequence[int]] | None = None) -> Chunks:
    """Split each span's ids into chunks and left-pad them into one batch (masked). ``pad_to > 0``: right-pad every
    chunk to ``pad_to`` tokens of ``pad_id`` that are read like text (mask all ones), as 500xCompressor does.
    ``prefixes`` (one id list per span, e.g. its question): read before each of the span's chunks, outside
    ``pool_mask``."""
    if prefixes is not None and pad_to:
        raise ValueError("prefixes need left-padded chunks (pad_to=0)")
    rows, span, index, own = [], [], [], []
    for s, ids in enumerate(token_ids):
        prefix = list(prefixes[s]) if prefixes is not None else []
        for c, chunk in enumerate(split_into_chunks(ids, chunk_tokens)):
            rows.append(prefix + chunk)
            own.append(len(chunk))
            span.append(s)
            index.append(c)
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), max(width, pad_to)), pad_id, dtype=torch.long)
    if pad_to:
        for n, r in enumerate(rows):
            ids[n, : len(r)] = torch.tensor(r, dtype=torch.long)
        return Chunks(ids, torch.ones_like(ids), torch.tensor(span), torch.tensor(index), [len(t) for t in token_ids],
                      sizes=own)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    pool_mask = torch.zeros_like(mask) if prefixes is not None else None
    for n, (r, k) in enumerate(zip(rows, own)):
        if r:
            ids[n, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[n, width - len(r):] = 1
        if pool_mask is not None and k:
            pool_mask[n, width - k:] = 1
    return Chunks(ids, mask, torch.tensor(span), torch.tensor(index), [len(t) for t in token_ids], pool_mask, own)


def span_layouts(chunks: Chunks, soft_counts: list[int]) -> list[tuple[tuple[int, int], ...]]:
    """Per span, ``(tokens, soft tokens)`` of each of its chunks in order (``soft_counts``: one per chunk row), the
    :attr:`~mmcompress.results.SoftSegment.chunk_layout` that lets a decoder read each chunk on its own."""
    sizes = chunks.sizes if chunks.sizes is not None else [0] * len(soft_counts)
    layouts: list[list[tuple[int, int]]] = [[] for _ in range(chunks.spans)]
    for span, size, count in zip(chunks.span.tolist(), sizes, soft_counts):
        layouts[span].append((int(size), int(count)))
    return [tuple(layout) for layout in layouts]


def gather_spans(per_chunk: torch.Tensor, chunks: Chunks) -> list[torch.Tensor]:
    """Concatenate each span's chunk outputs in chunk order: ``[N, K, ...]`` -> per span ``[n_s * K, ...]``.

    Chunks of a span are consecutive rows (``make_chunks`` order), so this is a split, not a gather."""
    counts = chunks.chunks_per_span()
    return [x.flatten(0, 1) for x in torch.split(per_chunk, counts, dim=0)]
