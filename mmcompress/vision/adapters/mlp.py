"""LLaVA's MLP projector: ``Linear(Dv -> D) - GELU - Linear(D -> D)`` per patch token (no compression: K = N).

With ``tokens`` set, the patch grid is average-pooled to K tokens first (pool-then-project), so the same module
serves as a compressing projector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import AdapterConfig, VisionAdapter, register_adapter
from .pool import pool_tokens


@dataclass
class MLPConfig(AdapterConfig):
    tokens: int | None = None  # None: one output token per patch, as in LLaVA
    depth: int = 2  # linear layers (LLaVA-1.5 "mlp2x_gelu": 2; 1 = the original LLaVA linear projector)


@register_adapter("mlp")
class MLPProjector(VisionAdapter):
    config_class = MLPConfig

    def __init__(self, config: MLPConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        layers: list[nn.Module] = [nn.Linear(c.in_dim, c.out_dim)]
        for _ in range(c.depth - 1):
            layers += [nn.GELU(), nn.Linear(c.out_dim, c.out_dim)]
        self.proj = nn.Sequential(*layers)

    def forward(self, patch_tokens: torch.Tensor, **_: object) -> torch.Tensor:
        """``[B, N, Dv] -> [B, K, D]`` (K = N unless ``tokens`` is set)."""
        self.check_input(patch_tokens)
        if self.config.tokens is not None and self.config.tokens != patch_tokens.shape[1]:
            patch_tokens = pool_tokens(patch_tokens, self.config.tokens)
        return self.proj(patch_tokens)
