"""Flamingo's Perceiver Resampler (after lucidrains/flamingo-pytorch): K learned latents cross-attend to the
patch tokens; keys and values come from ``cat(patches, latents)``, the Flamingo-specific departure from a plain
Perceiver. Each layer is attention + feed-forward (residual), then a final LayerNorm and a projection to the LLM.

``forward(x, tokens=m)`` uses only the first ``m`` latents (MQT-LLaVA's nested queries), so one resampler trained
with random ``m`` serves every budget up to K.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn

from ...errors import BudgetError
from .base import AdapterConfig, FeedForward, VisionAdapter, register_adapter


@dataclass
class PerceiverConfig(AdapterConfig):
    tokens: int | None = 64  # latents (Flamingo: 64)
    width: int | None = None  # latent width (None: in_dim)
    depth: int = 2  # Flamingo uses 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: float = 4.0
    max_patches: int = 0  # >0: learned position embedding for up to this many patches


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = heads * dim_head
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


@register_adapter("perceiver")
class PerceiverResampler(VisionAdapter):
    config_class = PerceiverConfig

    def __init__(self, config: PerceiverConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.tokens is None:
            raise BudgetError("the Perceiver resampler needs a number of latents (tokens)")
        width = c.width or c.in_dim
        self.in_proj = nn.Linear(c.in_dim, width) if width != c.in_dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(c.tokens, width) * width ** -0.5)
        self.pos_emb = nn.Parameter(torch.zeros(c.max_patches, width)) if c.max_patches else None
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, c.heads, c.dim_head), FeedForward(width, c.ff_mult)])
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, c.out_dim)

    def forward(self, patch_tokens: torch.Tensor, tokens: int | None = None, **_: object) -> torch.Tensor:
        """``[B, N, Dv] -> [B, K, D]`` (``tokens``: use only the first ``tokens`` latents)."""
        self.check_input(patch_tokens)
        k = tokens or self.config.tokens
        if not 1 <= k <= self.config.tokens:
            raise BudgetError(f"this resampler has {self.config.tokens} latents; cannot return {k} tokens")
        x = self.in_proj(patch_tokens)
        if self.pos_emb is not None:
            if x.shape[1] > self.pos_emb.shape[0]:
                raise BudgetError(f"{x.shape[1]} patches exceed max_patches={self.pos_emb.shape[0]}")
            x = x + self.pos_emb[: x.shape[1]]
        latents = repeat(self.latents[:k], "k d -> b k d", b=x.shape[0])
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.out_proj(self.norm(latents))
