"""ToMe (Bolya et al., 2023; facebookresearch/ToMe): bipartite soft matching, applied to the encoder's output
tokens until ``k`` remain.

Each round splits the tokens alternately into sets A and B, links every A token to its most similar B token
(cosine of the attention keys), and merges the ``r`` most similar pairs by a size-weighted average, with
``r <= |A|`` (ToMe's 50% cap per step). Rounds repeat until exactly ``k`` tokens are left; merged tokens carry
their size (ToMe's proportional attention uses it) and the output is put back in patch order.
"""
from __future__ import annotations

import torch

from ...registry import register_compressor
from .base import ReductionResult, VisualReduction, gather_tokens, normalized_metric


def bipartite_merge(x, metric, size, pos, r: int):
    """One ToMe step on ``x [B, N, D]`` with ``metric [B, N, Dm]``, ``size [B, N]``, ``pos [B, N]``: merge ``r``."""
    a_x, b_x = x[:, ::2], x[:, 1::2]
    a_m, b_m = metric[:, ::2], metric[:, 1::2]
    a_s, b_s = size[:, ::2], size[:, 1::2]
    a_p, b_p = pos[:, ::2], pos[:, 1::2]
    scores = a_m @ b_m.transpose(1, 2)  # [B, Na, Nb]
    node_max, node_idx = scores.max(-1)
    order = node_max.argsort(-1, descending=True)
    src, unm = order[:, :r], order[:, r:]  # merged A tokens, kept A tokens
    dst = node_idx.gather(1, src)

    def merge(a, bb):
        """Size-weighted sums: unmerged A tokens, then B tokens with their merged A tokens added."""
        a = a * a_s.unsqueeze(-1).to(a.dtype)
        out = bb * b_s.unsqueeze(-1).to(a.dtype)
        out = out.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, a.shape[-1]), gather_tokens(a, src))
        return torch.cat([gather_tokens(a, unm), out], dim=1)

    new_size = torch.cat([a_s.gather(1, unm), b_s.scatter_add(1, dst, a_s.gather(1, src))], dim=1)
    x = merge(a_x.float(), b_x.float()) / new_size.unsqueeze(-1)
    metric = torch.nn.functional.normalize(merge(a_m, b_m), dim=-1)
    new_pos = torch.cat([a_p.gather(1, unm), b_p.scatter_reduce(1, dst, a_p.gather(1, src), "amin")], dim=1)
    return x, metric, new_size, new_pos


@register_compressor("tome")
class ToMe(VisualReduction):
    """ToMe: bipartite soft matching of visual tokens down to K."""
    def reduce_to(self, features, k: int) -> ReductionResult:
        x0 = features.patch_tokens
        b, n, _ = x0.shape
        x, metric = x0.float(), normalized_metric(features)
        size = torch.ones(b, n, dtype=torch.long, device=x0.device)
        pos = torch.arange(n, device=x0.device).expand(b, -1)
        while x.shape[1] > k:
            r = min(x.shape[1] - k, (x.shape[1] + 1) // 2)
            x, metric, size, pos = bipartite_merge(x, metric, size, pos, r)
        order = pos.argsort(-1)  # back to patch order (a merged token sits at its first patch)
        return ReductionResult(gather_tokens(x, order).to(x0.dtype), pos.gather(1, order), size.gather(1, order), n)
