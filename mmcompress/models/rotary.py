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


def layer_rotary(model: Any, x: torch.Tensor, position_ids: torch.Tensor, layer: int = 0):
    """``(cos, sin, scale)`` of ``layer``'s rotary embedding at ``position_ids``. Models whose layer types rotate
    differently (Gemma 3: sliding-window layers with a local base, full-attention layers with the global one) get
    the table of ``layer``'s type; others have one table for every layer."""
    rotary = rotary_module(model)
    layer_types = getattr(getattr(rotary, "config", None), "layer_types", None)
    per_type = getattr(rotary, "layer_types", None)  # transformers 5: one rotary module holds a table per type
    if layer_types is not None and per_type is not None:
        kind = layer_types[layer]
        cos, sin = rotary(x, position_ids, kind)
        return cos, sin, getattr(rotary, f"{kind}_attention_scaling", 1.0)
    cos, sin = rotary(x, position_ids)
    return cos, sin, getattr(rotary, "attention_scaling", 1.0)


def shift_keys(model: Any, keys: torch.Tensor, delta: torch.Tensor | int, layer: int = 0) -> torch.Tensor:
    """Re-rotate post-RoPE ``keys`` ``(B, H, T, d)`` of ``layer`` by ``delta`` positions (an int, or one per row
    ``(B,)``)."""
    batch = keys.shape[0]
    delta = torch.as_tensor(delta, device=keys.device).reshape(-1).expand(batch)
    cos, sin, scale = layer_rotary(model, keys, delta.abs()[:, None], layer)  # (B, 1, d)
    sin = sin * delta.sign()[:, None, None].to(sin.dtype)  # a negative shift rotates backwards
    cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)
    return (keys * cos + _rotate_half(keys) * sin) / scale  # cos/sin carry the scale; one rotation must not rescale


def shift_rotary_keys(keys: torch.Tensor, delta: int, backbone: Any, layer: int = 0) -> torch.Tensor:
    """Rotate post-RoPE keys ``[H, T, d]`` of ``layer`` by ``delta`` positions (R(p + delta) = R(delta) R(p)); the
    layer matters for models whose layer types have different rotary bases (Gemma 3)."""
    if delta == 0:
        return keys
    return shift_keys(backbone, keys[None], int(delta), layer)[0]
