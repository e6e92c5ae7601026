"""ToMe (Bolya et al., 2023; facebookresearch/ToMe): bipartite soft matching, applied to the encoder's output
tokens until ``k`` remain.

Each round is the official ``bipartite_soft_matching`` + ``merge_wavg`` (``tome/merge.py``): tokens alternate into
sets A and B, every A token links to its most similar B token (cosine of the keys *averaged over heads*, ToMe's
``k.mean(1)``), the ``r`` most similar A tokens are merged into their B tokens by a size-weighted average, with
``r <= t // 2`` (ToMe's 50% cap). Inside a ViT, ToMe merges once per layer and the next layer computes fresh keys;
here the rounds run on one layer's output, so the keys are merged with the same size-weighted average and the next
round matches on them. Merged tokens carry their size; the output is put back in patch order (a merged token sits
at its first patch): ToMe's own order (unmerged A tokens by score, then B) is an artefact a ViT ignores, but a
language model reading the tokens would not. Option, off by default: ``head_mean_keys=False`` compares keys with
heads concatenated (the earlier mmcompress metric).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...registry import register_compressor
from .base import ReductionConfig, ReductionResult, VisualReduction, gather_tokens, key_metric


@dataclass
class ToMeConfig(ReductionConfig):
    head_mean_keys: bool = True  # ToMe's metric: keys averaged over heads


def bipartite_merge(x, metric, size, pos, r: int):
    """One ToMe step on ``x [B, N, D]`` with ``metric [B, N, Dm]`` (unnormalised), ``size [B, N]``, ``pos [B, N]``:
    merge ``r`` A tokens into B. Returns the merged ``x, metric, size, pos``."""
    unit = torch.nn.functional.normalize(metric, dim=-1)
    scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # [B, Na, Nb]
    node_max, node_idx = scores.max(-1)
    order = node_max.argsort(-1, descending=True)
    src, unm = order[:, :r], order[:, r:]  # merged A tokens, kept A tokens
    dst = node_idx.gather(1, src)

    def merge_sum(t):
        a, bb = t[:, ::2], t[:, 1::2]
        out = bb.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, t.shape[-1]), gather_tokens(a, src))
        return torch.cat([gather_tokens(a, unm), out], dim=1)

    weight = size.unsqueeze(-1).to(x.dtype)
    new_size = merge_sum(weight)
    x = merge_sum(x * weight) / new_size  # ToMe's merge_wavg
    metric = merge_sum(metric * weight) / new_size
    a_p, b_p = pos[:, ::2], pos[:, 1::2]
    new_pos = torch.cat([a_p.gather(1, unm), b_p.scatter_reduce(1, dst, a_p.gather(1, src), "amin")], dim=1)
    return x, metric, new_size.squeeze(-1).round().long(), new_pos


@register_compressor("tome")
class ToMe(VisualReduction):
    """ToMe: bipartite soft matching of visual tokens down to K."""
    config_class = ToMeConfig

    def reduce_to(self, features, k: int) -> ReductionResult:
        x0 = features.patch_tokens
        b, n, _ = x0.shape
        x, metric = x0.float(), key_metric(features, self.config.head_mean_keys)
        size = torch.ones(b, n, dtype=torch.long, device=x0.device)
        pos = torch.arange(n, device=x0.device).expand(b, -1)
        while x.shape[1] > k:
            r = min(x.shape[1] - k, x.shape[1] // 2)
            x, metric, size, pos = bipartite_merge(x, metric, size, pos, r)
        order = pos.argsort(-1)  # back to patch order (a merged token sits at its first patch)
        return ReductionResult(gather_tokens(x, order).to(x0.dtype), pos.gather(1, order), size.gather(1, order), n)
