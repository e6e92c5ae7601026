"""SnapKV (Li et al. 2024; kvpress ``SnapKVPress``): the last ``window_size`` queries of the prefill (the
"observation window") vote for the keys they attend to; votes are smoothed by 1-D average pooling and summed over the
query heads of each KV group. The window itself is always kept."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from ..errors import ConfigError
from .base import KVPress, register_press


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def window_queries(module, hidden_states: torch.Tensor, kwargs, window: int) -> torch.Tensor:
    """Post-RoPE queries ``(B, H, window, d)`` of the last ``window`` positions, recomputed from the layer input."""
    head_dim = module.head_dim
    queries = module.q_proj(hidden_states[:, -window:])
    queries = rearrange(queries, "b t (h d) -> b h t d", d=head_dim)
    if hasattr(module, "q_norm"):  # Qwen3-style per-head query norm
        queries = module.q_norm(queries.transpose(1, 2)).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"]
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    return queries * cos + _rotate_half(queries) * sin


@register_press("snapkv")
@dataclass
class SnapKVPress(KVPress):
    window_size: int = 32
    kernel_size: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.window_size) < 1 or int(self.kernel_size) < 1 or int(self.kernel_size) % 2 == 0:
            raise ConfigError(f"window_size must be >= 1 and kernel_size odd >= 1, got {self.window_size}, {self.kernel_size}")

    def score(self, module, hidden_states, keys, values, kwargs):
        batch, kv_heads, length, head_dim = keys.shape
        window = min(int(self.window_size), max(1, length - 1))
        queries = window_queries(module, hidden_states, kwargs, window)
        groups = queries.shape[1] // kv_heads
        keys_per_query_head = keys.repeat_interleave(groups, dim=1)
        logits = torch.einsum("bhqd,bhkd->bhqk", queries.float(), keys_per_query_head.float()) / math.sqrt(head_dim)
        # causal inside the window: window query i sits at position length - window + i
        causal = torch.ones(window, length, dtype=torch.bool, device=keys.device).tril(length - window)
        logits = logits.masked_fill(~causal, float("-inf"))
        weights = logits.softmax(dim=-1)[..., : length - window]
        votes = reduce(weights, "b h q k -> b h k", "mean")
        if votes.shape[-1]:
            votes = F.avg_pool1d(votes, kernel_size=int(self.kernel_size), padding=int(self.kernel_size) // 2, stride=1)
        votes = reduce(votes, "b (g r) k -> b g k", "mean", r=groups)
        protected = votes.new_full((batch, kv_heads, window), (votes.max().item() if votes.numel() else 0.0) + 1.0)
        return torch.cat([votes, protected], dim=-1)
