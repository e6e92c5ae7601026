"""Average pooling of the patch grid to ``k`` tokens (M3 / image downsampling, which VTC-Bench finds hard to beat)."""
from __future__ import annotations

import torch

from ...registry import register_compressor
from ..adapters.pool import pool_tokens
from .base import ReductionResult, VisualReduction


@register_compressor("vision_pool")
class PoolReduction(VisualReduction):
    """Average pooling of the patch grid to K tokens (M3-style baseline)."""
    def reduce_to(self, features, k: int) -> ReductionResult:
        x = features.patch_tokens
        n = x.shape[1]
        pooled = pool_tokens(x, k, features.grid)
        # anchor of each pooled token: the patch nearest its region's centre (by pooling patch positions)
        pos = torch.arange(n, device=x.device, dtype=x.dtype).view(1, n, 1)
        centre = pool_tokens(pos, k, features.grid).round().long().view(1, k).expand(x.shape[0], -1)
        sizes = torch.full(centre.shape, n // k, dtype=torch.long, device=x.device)
        return ReductionResult(pooled, centre, sizes, n)
