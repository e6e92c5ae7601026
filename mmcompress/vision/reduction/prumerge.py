"""LLaVA-PruMerge (Shang et al., 2024; 42Shawn/LLaVA-PruMerge): keep the patches the CLS token attends to most,
update each with its most similar neighbours, and add one token that sums up everything pruned.

By default this is the official ``token_prune_merge_advanced`` (``llava/model/multimodal_encoder/clip_encoder.py``):

- selection: ``K - 1`` patches by CLS attention, in *descending attention* order (``torch.topk``, sorted);
- merging: each kept token plus the CLS-attention-weighted sum of its ``neighbours`` (32) most key-similar other
  patches (cosine of the keys, heads concatenated as ``k_proj`` outputs them; kept patches included);
- the extra token: the attention-weighted sum of all pruned patches, appended last (so K tokens in all);
- ``adaptive=True`` (the paper's PruMerge): the number kept is the count of IQR outliers of the CLS attention
  (``attn > Q3 + 1.5 IQR``), computed as the official ``int(N * ratio)``, plus the extra token; ``tokens`` is then
  ignored, and images of one batch must agree on the count (reduce one image at a time otherwise; the VLM runner
  does). The official computes the quartiles over the whole batch; here per image (the same at batch size 1,
  the official evaluation setting).

Deliberate differences, documented: with fewer than ``neighbours + 1`` patches the neighbour count is capped at
``N - 1`` (the official ``topk(32)`` raises). Options, off by default: ``extra_token=False`` keeps K patches and no
extra token (the earlier mmcompress behaviour: every output token is anchored at a patch); ``patch_order=True``
puts the kept tokens in patch order (what a language model with 1D positions reads more naturally).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError
from ...registry import register_compressor
from .base import ReductionConfig, ReductionResult, VisualReduction, gather_tokens, normalized_metric


@dataclass
class PruMergeConfig(ReductionConfig):
    neighbours: int = 32  # the official cluster size
    adaptive: bool = False  # keep the IQR outliers (the official count), ignoring ``tokens``
    extra_token: bool = True  # append the attention-weighted sum of the pruned patches (official)
    patch_order: bool = False  # kept tokens in patch order instead of the official descending attention


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, N]``: scores above ``Q3 + 1.5 * IQR`` of their row."""
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device), dim=-1, keepdim=True)
    return scores > q3 + 1.5 * (q3 - q1)


@register_compressor("prumerge")
class PruMerge(VisualReduction):
    """LLaVA-PruMerge: CLS-attention selection + key-similar neighbour merging + the pruned tokens' summary token."""
    config_class = PruMergeConfig
    needs_attention = True

    def budget(self, num_patches: int, tokens: int | None = None, rate: float | None = None) -> int:
        if self.config.adaptive:  # the outliers set the count; ``tokens`` / ``rate`` are not used
            return num_patches
        return super().budget(num_patches, tokens, rate)

    def kept_count(self, attn: torch.Tensor, k: int) -> int:
        """Patches kept before merging: ``K - 1`` (``K`` without the extra token), or the outlier count (adaptive)."""
        if not self.config.adaptive:
            return k - 1 if self.config.extra_token else k
        n = attn.shape[1]
        counts = {int(n * (int(c) / n)) for c in iqr_outliers(attn).sum(-1)}  # the official int(N * ratio)
        if len(counts) > 1:
            raise ConfigError(f"adaptive PruMerge keeps a different number of tokens per image ({sorted(counts)}); "
                              "reduce one image at a time")
        return counts.pop()

    def reduce_to(self, features, k: int) -> ReductionResult:
        x, attn = features.patch_tokens, features.cls_attention.float()
        b, n, d = x.shape
        n_out = iqr_outliers(attn).sum(-1)
        left = self.kept_count(attn, k)
        kept = attn.topk(left, dim=-1).indices  # descending attention
        if self.config.patch_order:
            kept = kept.sort(-1).values
        tokens, sizes = gather_tokens(x, kept).float(), torch.ones_like(kept)
        m = min(self.config.neighbours, n - 1)
        if m > 0 and left:
            metric = normalized_metric(features)
            sim = gather_tokens(metric, kept) @ metric.transpose(1, 2)  # [B, K, N]
            sim.scatter_(2, kept.unsqueeze(-1), float("-inf"))  # not itself
            nb = sim.topk(m, dim=-1).indices  # [B, K, m]
            weights = attn.gather(1, nb.flatten(1)).view(b, left, m, 1)
            nb_tokens = gather_tokens(x, nb.flatten(1)).view(b, left, m, d).float()
            tokens = tokens + (nb_tokens * weights).sum(2)
            sizes = sizes + m
        index = kept
        if self.config.extra_token or self.config.adaptive:
            pruned = torch.ones(b, n, device=x.device).scatter(1, kept, 0.0)
            extra = ((x.float() * (attn * pruned).unsqueeze(-1)).sum(1, keepdim=True))
            tokens = torch.cat([tokens, extra], 1)
            index = torch.cat([kept, torch.full((b, 1), -1, dtype=torch.long, device=x.device)], 1)
            sizes = torch.cat([sizes, torch.full((b, 1), n - left, dtype=torch.long, device=x.device)], 1)
        return ReductionResult(tokens.to(x.dtype), index, sizes, n,
                               {"outliers": n_out.tolist(), "adaptive": self.config.adaptive})
