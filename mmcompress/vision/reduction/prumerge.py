"""LLaVA-PruMerge (Shang et al., 2024; 42Shawn/LLaVA-PruMerge): pick the patches whose CLS attention is an IQR
outlier, then update each kept token with its most similar neighbours.

- Selection: patches ranked by CLS attention (heads averaged). The reference keeps the IQR outliers
  (``attn > Q3 + 1.5 IQR``), an adaptive count; here the top-K are kept so the budget is exact, and the number of
  outliers is reported in ``extras["outliers"]`` (``adaptive=True`` keeps exactly the outliers instead, capped by K).
- Merging, as ``token_prune_merge_advanced``: for each kept token, its ``neighbours`` most key-similar other patches
  (cosine of the attention keys) are added to it, weighted by their CLS attention.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...budget import topk_indices
from ...registry import register_compressor
from .base import ReductionConfig, ReductionResult, VisualReduction, gather_tokens, normalized_metric


@dataclass
class PruMergeConfig(ReductionConfig):
    neighbours: int = 32  # the reference's cluster size
    adaptive: bool = False  # keep the IQR outliers only (fewer than K tokens when there are fewer outliers)


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, N]``: scores above ``Q3 + 1.5 * IQR`` of their row."""
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device), dim=-1, keepdim=True)
    return scores > q3 + 1.5 * (q3 - q1)


@register_compressor("prumerge")
class PruMerge(VisualReduction):
    """LLaVA-PruMerge: IQR-outlier CLS-attention selection + key-similar neighbour merging."""
    config_class = PruMergeConfig
    needs_attention = True

    def reduce_to(self, features, k: int) -> ReductionResult:
        x, attn = features.patch_tokens, features.cls_attention.float()
        b, n, _ = x.shape
        outliers = iqr_outliers(attn)
        n_out = outliers.sum(-1)
        if self.config.adaptive:
            k = max(1, min(k, int(n_out.min())))
        kept = topk_indices(attn, k)
        metric = normalized_metric(features)
        sim = gather_tokens(metric, kept) @ metric.transpose(1, 2)  # [B, K, N]
        sim.scatter_(2, kept.unsqueeze(-1), float("-inf"))  # not itself
        m = min(self.config.neighbours, n - 1)
        tokens = gather_tokens(x, kept)
        sizes = torch.ones_like(kept)
        if m > 0:
            nb = sim.topk(m, dim=-1).indices  # [B, K, m]
            weights = attn.gather(1, nb.flatten(1)).view(b, k, m, 1)
            nb_tokens = gather_tokens(x, nb.flatten(1)).view(b, k, m, -1)
            tokens = tokens + (nb_tokens.float() * weights).sum(2).to(x.dtype)
            sizes = sizes + m
        return ReductionResult(tokens, kept, sizes, n, {"outliers": n_out.tolist()})
