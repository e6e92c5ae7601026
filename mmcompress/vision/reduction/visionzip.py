"""VisionZip (Yang et al., 2024; dvlab-research/VisionZip): keep the *dominant* tokens that the CLS token attends to
most, and merge the rest into a few *contextual* tokens.

By default this is the official ``CLIPVisionTower_VisionZip.forward`` (``visionzip/clip_encoder.py``):

- dominant: the CLS token is one of the dominant slots (``visionzip(dominant=54)`` keeps CLS + 53 patches), the
  patches being the top ones by CLS attention (heads summed); output order CLS, then patches in patch order;
- contextual: among the remaining patches, ``C`` targets at a uniform stride ``max(1, M // C)``; every other remaining
  patch goes to the target whose key is most similar, the keys *averaged over heads* (the official ``metric`` is
  ``key_states.mean(1)``); a contextual token is the *target plus the mean* of the patches assigned to it.

The official split of 64 tokens is 54 + 10; ``contextual_ratio = 10/64`` keeps that split at any K. Towers without a
CLS token (SigLIP) give every dominant slot to a patch. Options, off by default:

- ``include_cls=False`` fills every dominant slot with a patch: for a projector that never saw the CLS token (LLaVA's
  ``select_strategy="default"`` drops it before the projector in training).
- ``contextual="mean"`` makes a contextual token the average of its target and assigned patches (a convex
  combination, so it stays in the range of features the projector was trained on; the official sum does not).
- ``head_mean_keys=False`` compares keys with heads concatenated (the earlier mmcompress metric).
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
    include_cls: bool = True  # the CLS token takes one dominant slot (official)
    contextual: str = "add"  # "add": target + mean of assigned (official); "mean": average of target and assigned
    head_mean_keys: bool = True  # similarity of keys averaged over heads (official)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual_ratio < 1.0:
            raise ConfigError(f"contextual_ratio must be in [0, 1), got {self.contextual_ratio}")
        if self.contextual not in ("add", "mean"):
            raise ConfigError(f"contextual must be 'add' (official) or 'mean', got {self.contextual!r}")


def split_budget(k: int, contextual_ratio: float) -> tuple[int, int]:
    contextual = int(round(k * contextual_ratio)) if k > 1 else 0
    return k - contextual, contextual


@register_compressor("visionzip")
class VisionZip(VisualReduction):
    """VisionZip: CLS-attention dominant tokens (CLS included) + contextual merging of the rest."""
    config_class = VisionZipConfig
    needs_attention = True

    def reduce_to(self, features, k: int) -> ReductionResult:
        x, attn = features.patch_tokens, features.cls_attention
        b, n, d = x.shape
        n_dom, n_ctx = split_budget(k, self.config.contextual_ratio)
        cls = features.cls_token if self.config.include_cls and features.num_prefix_tokens else None
        n_patches = n_dom - (cls is not None)
        parts, index, sizes = [], [], []
        if cls is not None:
            parts.append(cls.unsqueeze(1))
            index.append(torch.full((b, 1), -1, dtype=torch.long, device=x.device))  # stands at no patch
            sizes.append(torch.zeros(b, 1, dtype=torch.long, device=x.device))
        dominant = topk_indices(attn, n_patches) if n_patches else torch.zeros(b, 0, dtype=torch.long, device=x.device)
        parts.append(gather_tokens(x, dominant))
        index.append(dominant)
        sizes.append(torch.ones_like(dominant))
        extras = {"dominant": n_dom, "contextual": n_ctx, "cls": cls is not None}
        if n_ctx:
            contextual, targets, counts = self._contextual(features, dominant, n_ctx)
            parts.append(contextual)
            index.append(targets)
            sizes.append(counts)
        return ReductionResult(torch.cat(parts, 1).to(x.dtype), torch.cat(index, 1), torch.cat(sizes, 1), n, extras)

    def _contextual(self, features, dominant: torch.Tensor, n_ctx: int):
        """Contextual tokens ``[B, C, D]``, their target patches ``[B, C]`` and sizes ``[B, C]``."""
        x = features.patch_tokens
        b, n, d = x.shape
        keep = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter(1, dominant, False)
        rest = keep.nonzero()[:, 1].view(b, n - dominant.shape[1])  # remaining patches, in order
        metric = normalized_metric(features, head_mean=self.config.head_mean_keys)
        rest_tokens, rest_metric = gather_tokens(x, rest).float(), gather_tokens(metric, rest)
        m = rest.shape[1]
        target_pos = torch.arange(0, m, max(1, m // n_ctx), device=x.device)[:n_ctx]  # uniform stride
        is_target = torch.zeros(m, dtype=torch.bool, device=x.device)
        is_target[target_pos] = True
        others = (~is_target).nonzero().squeeze(1)
        sim = rest_metric[:, others] @ rest_metric[:, target_pos].transpose(1, 2)  # [B, m - C, C]
        assign = sim.argmax(-1)  # target of each other token
        sums = torch.zeros(b, n_ctx, d, device=x.device).scatter_add_(
            1, assign.unsqueeze(-1).expand(-1, -1, d), rest_tokens[:, others])
        assigned = torch.zeros(b, n_ctx, device=x.device).scatter_add_(1, assign, torch.ones_like(assign, dtype=sums.dtype))
        target = rest_tokens[:, target_pos]
        if self.config.contextual == "add":
            contextual = target + sums / assigned.clamp(min=1).unsqueeze(-1)
        else:
            contextual = (target + sums) / (assigned + 1).unsqueeze(-1)
        return contextual, rest[:, target_pos], assigned.long() + 1
