"""Moving cached keys along the sequence: RoPE rotations compose, so a key rotated for position ``p`` becomes the key
for ``p + delta`` by one more rotation by ``delta`` (kvpress ``KeyRerotationPress`` does the same)."""
from __future__ import annotations

from typing import Any

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary_module(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = base.get_decoder() if hasattr(base, "get_decoder") else base
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        from ..errors import ConfigError

        raise ConfigError(f"{type(model).__name__} has no rotary embedding; moving cached keys needs a RoPE model")
    return rotary


def shift_keys(model: Any, keys: torch.Tensor, delta: torch.Tensor | int) -> torch.Tensor:
    """Re-rotate post-RoPE ``keys`` ``(B, H, T, d)`` by ``delta`` positions (an int, or one per row ``(B,)``)."""
    batch = keys.shape[0]
    delta = torch.as_tensor(delta, device=keys.device).reshape(-1).expand(batch)
    rotary = rotary_module(model)
    cos, sin = rotary(keys, position_ids=delta.abs()[:, None])  # (B, 1, d)
    sin = sin * delta.sign()[:, None, None].to(sin.dtype)  # a negative shift rotates backwards
    cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)
    scale = getattr(rotary, "attention_scaling", 1.0)  # cos/sin carry it; one rotation must not rescale
    return (keys * cos + _rotate_half(keys) * sin) / scale
