"""VisionZip (Yang et al., 2024; dvlab-research/VisionZip): keep the *dominant* tokens that the CLS token attends to
most, and merge the rest into a few *contextual* tokens.

As in the reference: dominant = top-(K - C) patches by CLS attention (heads averaged); the C contextual targets are
taken at a uniform stride among the remaining patches, and every other remaining patch is averaged into the target
whose attention key is most similar. The output is ``[dominant (in patch order); contextual]``. The reference splits
64 tokens as 54 + 10; ``contextual_ratio = 10/64`` keeps that split at any K.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...budget import topk_indices
from ...errors import ConfigError
from ...registry import register_compressor
from .base import ReductionConfig, ReductionResult, VisualReduction, gather_tokens, normalized_metric


@dataclass
class VisionZipConfig(ReductionConfig):
    contextual_ratio: float = 10 / 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual_ratio < 1.0:
            raise ConfigError(f"contextual_ratio must be in [0, 1), got {self.contextual_ratio}")


def split_budget(k: int, contextual_ratio: float) -> tuple[int, int]:
    contextual = int(round(k * contextual_ratio)) if k > 1 else 0
    return k - contextual, contextual


@register_compressor("visionzip")
class VisionZip(VisualReduction):
    """VisionZip: CLS-attention dominant tokens + contextual merging of the rest."""
    config_class = VisionZipConfig
    needs_attention = True

    def reduce_to(self, features, k: int) -> ReductionResult:
        x, attn = features.patch_tokens, features.cls_attention
        b, n, d = x.shape
        n_dom, n_ctx = split_budget(k, self.config.contextual_ratio)
        dominant = topk_indices(attn, n_dom)  # [B, n_dom], patch order
        dom_tokens = gather_tokens(x, dominant)
        if n_ctx == 0:
            return ReductionResult(dom_tokens, dominant, torch.ones_like(dominant), n)
        keep = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter(1, dominant, False)
        rest = keep.nonzero()[:, 1].view(b, n - n_dom)  # remaining patches, in order
        rest_tokens, rest_metric = gather_tokens(x, rest), gather_tokens(normalized_metric(features), rest)
        m = rest.shape[1]
        target_pos = torch.arange(0, m, max(1, m // n_ctx), device=x.device)[:n_ctx]  # uniform stride
        is_target = torch.zeros(m, dtype=torch.bool, device=x.device)
        is_target[target_pos] = True
        others = (~is_target).nonzero().squeeze(1)
        sim = rest_metric[:, others] @ rest_metric[:, target_pos].transpose(1, 2)  # [B, m - C, C]
        assign = sim.argmax(-1)  # target of each other token
        sums = rest_tokens[:, target_pos].clone().float()
        counts = torch.ones(b, n_ctx, device=x.device)
        sums.scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, d), rest_tokens[:, others].float())
        counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=counts.dtype))
        contextual = (sums / counts.unsqueeze(-1)).to(x.dtype)
        tokens = torch.cat([dom_tokens, contextual], dim=1)
        index = torch.cat([dominant, rest[:, target_pos]], dim=1)
        sizes = torch.cat([torch.ones_like(dominant), counts.long()], dim=1)
        return ReductionResult(tokens, index, sizes, n, {"dominant": n_dom, "contextual": n_ctx})
