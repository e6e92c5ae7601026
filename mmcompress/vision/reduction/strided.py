"""Uniform-stride visual-token selection: ``k`` patches evenly spaced over the raster order."""
from __future__ import annotations

import torch

from ...registry import register_compressor
from .base import ReductionResult, VisualReduction, gather_tokens, unit_sizes


def strided_indices(n: int, k: int, device=None) -> torch.Tensor:
    """``k`` distinct indices evenly spread over ``range(n)`` (the centre one when ``k == 1``)."""
    if k == 1:
        return torch.tensor([n // 2], device=device)
    return torch.linspace(0, n - 1, k, device=device).round().long()  # spacing >= 1, so all distinct


@register_compressor("vision_strided")
class StridedReduction(VisualReduction):
    """Uniform-stride visual-token selection (baseline)."""

    ranks_patches = False  # the choice ignores what the encoder computed

    def reduce_to(self, features, k: int) -> ReductionResult:
        x = features.patch_tokens
        index = strided_indices(x.shape[1], k, x.device).expand(x.shape[0], -1)
        return ReductionResult(gather_tokens(x, index), index, unit_sizes(index), x.shape[1])
