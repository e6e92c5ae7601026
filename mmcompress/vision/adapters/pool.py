"""Average pooling to K tokens (Matryoshka multimodal models, M3): ``avg_pool2d`` on the patch grid, then a
projection into the LLM's space (``project``: mlp, linear, or none when the widths already match)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ...errors import BudgetError, ConfigError
from .base import AdapterConfig, VisionAdapter, register_adapter


def pool_tokens(tokens: torch.Tensor, k: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Average-pool ``[B, N, D]`` to ``[B, k, D]``: on the 2-D patch grid when N and k are squares (as M3 pools the
    24x24 LLaVA grid), else adaptively along the sequence."""
    n = tokens.shape[1]
    if not 1 <= k <= n:
        raise BudgetError(f"cannot pool {n} patch tokens to {k}; k must be between 1 and {n}")
    side, k_side = math.isqrt(n), math.isqrt(k)
    h, w = grid if grid is not None else (side, side) if side * side == n else (0, 0)
    if h * w == n and k_side * k_side == k and h >= k_side and w >= k_side:
        x = rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)
        x = nn.functional.adaptive_avg_pool2d(x, (k_side, k_side))
        return rearrange(x, "b d h w -> b (h w) d")
    return rearrange(nn.functional.adaptive_avg_pool1d(rearrange(tokens, "b n d -> b d n"), k), "b d n -> b n d")


@dataclass
class PoolConfig(AdapterConfig):
    tokens: int | None = 16
    project: str = "mlp"  # mlp | linear | none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.project not in ("mlp", "linear", "none"):
            raise ConfigError(f"project must be mlp, linear or none, got {self.project!r}")
        if self.project == "none" and self.in_dim != self.out_dim:
            raise ConfigError("project='none' needs in_dim == out_dim")


@register_adapter("pool")
class PoolAdapter(VisionAdapter):
    config_class = PoolConfig

    def __init__(self, config: PoolConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.project == "mlp":
            self.proj = nn.Sequential(nn.Linear(c.in_dim, c.out_dim), nn.GELU(), nn.Linear(c.out_dim, c.out_dim))
        elif c.project == "linear":
            self.proj = nn.Linear(c.in_dim, c.out_dim)
        else:
            self.proj = nn.Identity()

    def forward(self, patch_tokens: torch.Tensor, tokens: int | None = None, **_: object) -> torch.Tensor:
        """``[B, N, Dv] -> [B, K, D]``; ``tokens`` overrides K for this call (nested scales share one projector)."""
        self.check_input(patch_tokens)
        k = tokens or self.config.tokens or patch_tokens.shape[1]
        return self.proj(pool_tokens(patch_tokens, k))
