"""Random visual-token pruning (seeded): the baseline that UniPruneBench finds surprisingly strong."""
from __future__ import annotations

import torch

from ...budget import topk_indices
from ...registry import register_compressor
from .base import ReductionResult, VisualReduction, gather_tokens, unit_sizes


@register_compressor("vision_random")
class RandomReduction(VisualReduction):
    """Random visual-token pruning (seeded baseline)."""

    ranks_patches = False  # the choice ignores what the encoder computed

    def reduce_to(self, features, k: int) -> ReductionResult:
        x = features.patch_tokens
        g = torch.Generator().manual_seed(self.config.seed)
        scores = torch.rand(x.shape[:2], generator=g).to(x.device)
        index = topk_indices(scores, k)
        return ReductionResult(gather_tokens(x, index), index, unit_sizes(index), x.shape[1])
