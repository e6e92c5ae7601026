"""Which tokens of a left-padded chunk share a pooled position (mean-pooling's groups), and the matrix that averages
them. Shared by :mod:`.meanpool` (uniform groups of ``pool_ratio``, or a fixed count per chunk) and :mod:`.focus`
(question-focused groups)."""
from __future__ import annotations

import torch


def token_index(mask: torch.Tensor) -> torch.Tensor:
    """``[N, W]``: each position's index among its left-padded chunk's real tokens (negative on padding)."""
    width = mask.shape[1]
    return torch.arange(width, device=mask.device)[None, :] - (width - mask.sum(1))[:, None]


def group_index(mask: torch.Tensor, ratio: int | None = None, *,
                groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For left-padded chunks (``mask`` ``[N, W]``): each position's group ``[N, W]`` (-1 on padding) and the number
    of groups of each chunk ``[N]``. Either groups of ``ratio`` consecutive real tokens (the last group of a chunk may
    be shorter), or ``groups`` contiguous near-equal groups per chunk (sizes differ by at most one, as adaptive
    average pooling; a chunk shorter than ``groups`` gets one group per token): a fixed soft-token count per chunk."""
    if (ratio is None) == (groups is None):
        raise ValueError("give exactly one of ratio and groups")
    lengths = mask.sum(1)
    index = token_index(mask)
    if ratio is not None:
        group = torch.div(index, ratio, rounding_mode="floor")
        counts = torch.div(lengths + ratio - 1, ratio, rounding_mode="floor")
    else:
        counts = lengths.clamp(max=int(groups))
        group = torch.div(index * counts[:, None], lengths.clamp(min=1)[:, None], rounding_mode="floor")
    return torch.where(mask.bool(), group, torch.full_like(index, -1)), counts


def pooling_matrix(mask: torch.Tensor, ratio: int | None = None, *,
                   groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``P`` ``[N, G, W]`` averaging the groups of :func:`group_index`, and the number of groups of each chunk."""
    group, counts = group_index(mask, ratio, groups=groups)
    return averaging_matrix(group, counts), counts


def averaging_matrix(group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[N, G, W]``: row ``g`` averages the positions whose ``group`` is ``g``."""
    width = max(1, int(counts.max()))
    onehot = (group[:, None, :] == torch.arange(width, device=group.device)[None, :, None]).float()
    return onehot / onehot.sum(-1, keepdim=True).clamp(min=1.0)
