"""A Q-Former-style adapter (BLIP-2; text-conditioned as in InstructBLIP): K learned queries pass through
transformer layers whose self-attention runs over ``[queries; instruction text]`` and which cross-attend to the
patch tokens every ``cross_attention_frequency`` layers (BLIP-2: every 2nd). Only the query outputs are kept and
projected into the LLM (BLIP-2's ``language_projection``).

Text conditioning is optional: ``forward(patches, text_embeds=[B, T, text_dim], text_mask=[B, T])``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat
from torch import nn

from ...errors import BudgetError, ConfigError
from .base import AdapterConfig, FeedForward, VisionAdapter, register_adapter


@dataclass
class QFormerConfig(AdapterConfig):
    tokens: int | None = 32  # queries (BLIP-2: 32)
    width: int = 256  # BLIP-2: 768 (BERT-base)
    depth: int = 2  # BLIP-2: 12
    heads: int = 4
    cross_attention_frequency: int = 2
    text_dim: int | None = None  # width of the conditioning text embeddings (None: no text conditioning)
    ff_mult: float = 4.0


class QFormerLayer(nn.Module):
    def __init__(self, width: int, heads: int, cross: bool, ff_mult: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross = cross
        if cross:
            self.norm_cross = nn.LayerNorm(width)
            self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = FeedForward(width, ff_mult)

    def forward(self, h: torch.Tensor, n_queries: int, image: torch.Tensor, pad_mask: torch.Tensor | None):
        x = self.norm_self(h)
        h = h + self.self_attn(x, x, x, key_padding_mask=pad_mask, need_weights=False)[0]
        if self.cross:  # only the queries look at the image
            q = h[:, :n_queries]
            q = q + self.cross_attn(self.norm_cross(q), image, image, need_weights=False)[0]
            h = torch.cat([q, h[:, n_queries:]], dim=1)
        return h + self.ff(h)


@register_adapter("qformer")
class QFormer(VisionAdapter):
    config_class = QFormerConfig

    def __init__(self, config: QFormerConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.tokens is None:
            raise BudgetError("the Q-Former needs a number of queries (tokens)")
        if c.cross_attention_frequency < 1:
            raise ConfigError("cross_attention_frequency must be >= 1")
        self.queries = nn.Parameter(torch.randn(c.tokens, c.width) * 0.02)
        self.image_proj = nn.Sequential(nn.LayerNorm(c.in_dim), nn.Linear(c.in_dim, c.width))
        self.text_proj = nn.Linear(c.text_dim, c.width) if c.text_dim else None
        self.layers = nn.ModuleList(
            QFormerLayer(c.width, c.heads, cross=(i % c.cross_attention_frequency == 0), ff_mult=c.ff_mult)
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width)
        self.language_projection = nn.Linear(c.width, c.out_dim)

    def forward(self, patch_tokens: torch.Tensor, text_embeds: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        """``[B, N, Dv]`` (+ optional instruction ``[B, T, text_dim]``) -> ``[B, K, D]``."""
        self.check_input(patch_tokens)
        b, k = patch_tokens.shape[0], self.config.tokens
        image = self.image_proj(patch_tokens)
        h = repeat(self.queries, "k d -> b k d", b=b)
        pad_mask = None
        if text_embeds is not None:
            if self.text_proj is None:
                raise ConfigError("this Q-Former was built without text conditioning; set text_dim to use text_embeds")
            if text_embeds.ndim != 3 or text_embeds.shape[0] != b or text_embeds.shape[-1] != self.config.text_dim:
                raise ConfigError(f"text_embeds must be [B={b}, T, {self.config.text_dim}], got {tuple(text_embeds.shape)}")
            h = torch.cat([h, self.text_proj(text_embeds)], dim=1)
            if text_mask is not None:
                keep = torch.cat([torch.ones(b, k, dtype=torch.bool, device=h.device), text_mask.bool()], dim=1)
                pad_mask = ~keep
        for layer in self.layers:
            h = layer(h, k, image, pad_mask)
        return self.language_projection(self.norm(h[:, :k]))
