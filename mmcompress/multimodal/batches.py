"""Training and compression batches of the ``interleaved`` compressor: every chunk of every compressible part in one
left-padded batch, the images in one pixel batch, the decoder tails right-padded."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..soft.base import right_pad
from ..soft.chunking import TASK_IDS
from ..soft.losses import IGNORE
from .chunking import pack_blocks
from .embedding import TEXT, SequencePlan


@dataclass
class EncodedItem:
    """One example for the trainable model: the plan of its compressible part, the decoder tail and its labels, and
    (question-aware encoders) the question tokens the encoder reads after each chunk."""

    plan: SequencePlan
    tail: list[int]
    labels: list[int]
    task: str
    query: list[int] = field(default_factory=list)


def collate_items(items: Sequence[EncodedItem], image_path: Any, chunk_tokens: int, pad_id: int,
                  full: bool = False) -> dict[str, torch.Tensor]:
    """Batch examples: every chunk of every compressible part left-padded in one ``[N, L]`` batch (image positions
    marked by their batch-wide image number), the images preprocessed into one pixel batch, tails right-padded.

    With ``full`` the compressible part is one row per example (no chunking: the decoder reads it as is). An item's
    ``query`` tokens are appended to every one of its chunks (they count against no chunk's ``chunk_tokens``).
    """
    rows, spans, index, images = [], [], [], []
    image_base = 0
    for b, item in enumerate(items):
        plan = item.plan
        if full:
            chunks = [(0, len(plan))]
        else:
            chunks = pack_blocks(_block_lengths(plan.image_index), chunk_tokens) or [(0, 0)]
        for c, (s, e) in enumerate(chunks):
            ids = plan.input_ids[s:e] + item.query
            img = [i + image_base if i >= 0 else i for i in plan.image_index[s:e]] + [TEXT] * len(item.query)
            rows.append((ids, img))
            spans.append(b)
            index.append(c)
        image_base += len(plan.images)
        images.extend(plan.images)
    width = max(1, max(len(r[0]) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    image_index = torch.full((len(rows), width), -2, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for n, (r, img) in enumerate(rows):
        if r:
            ids[n, width - len(r):] = torch.tensor([max(t, 0) if t >= 0 else pad_id for t in r])
            image_index[n, width - len(r):] = torch.tensor(img)
            mask[n, width - len(r):] = 1
    tails = [torch.tensor(it.tail, dtype=torch.long) for it in items]
    tail_ids, tail_mask = right_pad(tails, pad_id)
    labels, _ = right_pad([torch.tensor(it.labels, dtype=torch.long) for it in items], IGNORE)
    batch = {"chunk_ids": ids, "chunk_mask": mask, "chunk_image": image_index, "chunk_span": torch.tensor(spans),
             "chunk_index": torch.tensor(index), "tail_ids": tail_ids, "tail_mask": tail_mask, "labels": labels,
             "task": torch.tensor([TASK_IDS[it.task] for it in items], dtype=torch.long)}
    if images:
        batch["pixels"] = image_path.preprocess(images)
    return batch


def _block_lengths(image_index: Sequence[int]) -> list[int]:
    lengths, t = [], 0
    while t < len(image_index):
        end = t + 1
        if image_index[t] >= 0:
            while end < len(image_index) and image_index[end] == image_index[t]:
                end += 1
        lengths.append(end - t)
        t = end
    return lengths
