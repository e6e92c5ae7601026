"""Small shims over the transformers versions we support (4.56+ and 5.x).

transformers 5.2x renamed the ``past_key_values`` argument and output field to ``cache``; older 5.x and 4.x use
``past_key_values``. Code in mmcompress passes and reads caches only through these helpers.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=64)
def _cache_arg_name(forward_fn: Any) -> str:
    params = inspect.signature(forward_fn).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever ``model.forward`` takes."""
    return {_cache_arg_name(type(model).forward): cache}


def output_cache(output: Any) -> Any:
    """The cache returned by a forward pass, whatever the field is called."""
    fields = getattr(output, "__dataclass_fields__", {})
    return getattr(output, "cache" if "cache" in fields else "past_key_values", None)


def new_cache(model: Any = None):
    """An empty DynamicCache, one layer per model layer, every layer keeping all its positions.

    ``DynamicCache(config=...)`` gives models with sliding-window layers (Gemma 2/3, Mistral...) layers that drop
    positions older than the window by themselves, and then cannot be cropped, evicted from, prepended to or read
    back by position as mmcompress does; those are replaced by full layers. The model's own sliding-window mask
    (built from the config) still limits attention, so outputs are the same; the layers only hold more memory past
    the window."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config) if model is not None else DynamicCache()
    except TypeError:
        return DynamicCache()
    if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ())):
        from transformers.cache_utils import DynamicLayer

        cache.layers = [DynamicLayer() if getattr(layer, "is_sliding", False) else layer for layer in cache.layers]
    return cache


def cache_length(cache: Any) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def keep_last_in_cache(cache: Any, n: int) -> None:
    """Evict all but the last ``n`` positions of every layer of a DynamicCache, in place (sliding window)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., -n:, :]
            layer.values = layer.values[..., -n:, :]


def is_rotary(model: Any) -> bool:
    """True for models with rotary position embeddings, whose attention depends only on relative positions."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    return any(hasattr(text_config, k) for k in ("rope_parameters", "rope_theta", "rope_scaling")) and not hasattr(
        text_config, "n_positions"
    )


def prepend_cache(prefix: Any, cache: Any) -> None:
    """Put ``prefix``'s positions in front of ``cache``'s, layer by layer, in place."""
    import torch

    for head, layer in zip(prefix.layers, cache.layers):
        layer.keys = torch.cat([head.keys, layer.keys], dim=-2)
        layer.values = torch.cat([head.values, layer.values], dim=-2)
