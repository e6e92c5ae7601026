"""Average pooling of the patch grid to ``k`` tokens (M3 / image downsampling, which VTC-Bench finds hard to beat)."""
from __future__ import annotations

import math

import torch

from ...registry import register_compressor
from ..adapters.pool import pool_tokens
from .base import ReductionResult, VisualReduction


def _windows(n: int, k: int) -> list[range]:
    """The windows of ``adaptive_avg_pool`` over ``n`` positions with ``k`` outputs."""
    return [range((i * n) // k, -((-(i + 1) * n) // k)) for i in range(k)]


def pool_regions(n: int, k: int, grid: tuple[int, int] | None = None) -> list[list[int]]:
    """The patches each of the ``k`` pooled tokens averages (the same 2-D / 1-D choice as :func:`pool_tokens`)."""
    side, k_side = math.isqrt(n), math.isqrt(k)
    h, w = grid if grid is not None else (side, side) if side * side == n else (0, 0)
    if h * w == n and k_side * k_side == k and h >= k_side and w >= k_side:
        return [[r * w + c for r in rows for c in cols] for rows in _windows(h, k_side) for cols in _windows(w, k_side)]
    return [list(win) for win in _windows(n, k)]


@register_compressor("vision_pool")
class PoolReduction(VisualReduction):
    """Average pooling of the patch grid to K tokens (M3-style baseline)."""

    ranks_patches = False  # the choice ignores what the encoder computed

    def reduce_to(self, features, k: int) -> ReductionResult:
        x = features.patch_tokens
        n = x.shape[1]
        regions = pool_regions(n, k, features.grid)
        anchors = torch.tensor([r[0] for r in regions], device=x.device).expand(x.shape[0], -1)
        sizes = torch.tensor([len(r) for r in regions], device=x.device).expand(x.shape[0], -1)
        return ReductionResult(pool_tokens(x, k, features.grid), anchors, sizes, n)
