"""``torch.compile`` of a model's repeated blocks (its decoder layers), the unit that compiles well on CPU.

Inductor fuses each block's elementwise work (RMSNorm, rotary, SiLU, LoRA's casts and scaling) into C++ kernels;
on the 2-core CPU a ``meanpool`` training step ran 1.22x faster than eager (``benchmarks/soft_train_speed.py``). A whole
training step does not compile here: it switches adapters, builds caches and breaks the graph many times. Blocks
are found the way accelerate finds what it must not split across devices: the class names in each transformers
model's ``_no_split_modules``. All blocks share one compiled graph per adapter setting and shape (regional
compilation), so compiling takes seconds, not the minutes of one graph per layer (:class:`OneLayerCache`).

    from mmcompress.models.compile import compile_blocks
    compile_blocks(module)      # every decoder layer of every transformers model inside ``module``
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# compiled versions dynamo may keep per block: one per adapter setting (an encoder under LoRA and a frozen or
# separately adapted decoder share the layers), each again with dynamic shapes once lengths vary
VARIANTS_PER_BLOCK = 16

# inductor's AVX-512 kernels (its default on this CPU) gave NaN gradients in bfloat16 for a Llama layer whose cache
# is filled inside the compiled graph, at some shapes (SmolLM2's 576-wide layers at 128 tokens; 32-wide heads at 64
# tokens), where the eager pass, aot_eager and 256-bit kernels agree (torch 2.14; tests/test_compile.py)
CPU_SIMD_BITS = 256


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """Every submodule whose class a transformers model inside ``module`` names in ``_no_split_modules``, once."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    return [sub for sub in module.modules() if type(sub).__name__ in names]  # modules() yields each module once


def compile_blocks(module: nn.Module, share_graphs: bool = True, **compile_kwargs: Any) -> int:
    """Compile each repeated block of ``module`` in place, for the passes that train; returns how many.

    All blocks of a model share one forward and, seeing their cache through :class:`OneLayerCache`, one compiled
    graph per adapter setting and shape (``share_graphs=False``: one per block as well, as before; kept to measure
    the difference). Dynamo keeps a bounded number of compiled versions per function (8 by default), after which it
    silently runs the rest eagerly; the limits are raised to cover every block.
    On CPU, inductor's kernels are vectorised at 256 bits (see :data:`CPU_SIMD_BITS`)."""
    import torch._inductor.config  # here, not at import: it costs about a second, and the trainer imports this module

    blocks = repeated_blocks(module)
    inductor = torch._inductor.config
    if inductor.cpp.simdlen is None and any(p.device.type == "cpu" for b in blocks for p in b.parameters()):
        inductor.cpp.simdlen = CPU_SIMD_BITS
    config = torch._dynamo.config
    needed = VARIANTS_PER_BLOCK * max(len(blocks), 1)
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), needed))
    for block in blocks:
        if not hasattr(block.forward, "compiled"):  # compiled once, however often a module is handed over
            index = layer_index(block) if share_graphs else None
            block.forward = compiled_while_training(block.forward, index, **compile_kwargs)
    return len(blocks)


def layer_index(block: nn.Module) -> int | None:
    """The index a transformers decoder layer passes to its cache (its attention's ``layer_idx``), or None."""
    for sub in block.modules():
        if isinstance(getattr(sub, "layer_idx", None), int):
            return sub.layer_idx
    return None


class OneLayerCache:
    """What one layer sees of a transformers ``Cache``: ``update`` writes to that layer's entry, whatever index the
    layer passes. A layer hands its cache ``self.layer_idx``; traced through ``cache.layers[layer_idx]`` the index
    becomes a guard, so dynamo compiled every layer apart (30 traces per adapter setting for SmolLM2, minutes on 2
    cores, and a guard check over all of them at every call). Through this view all layers share one graph."""

    def __init__(self, cache: Any, layer_idx: int):
        self.cache = cache
        if getattr(cache, "layer_class_to_replicate", None) is not None:  # a DynamicCache grows its layers lazily
            while len(cache.layers) <= layer_idx:
                cache.layers.append(cache.layer_class_to_replicate())
        self.layer = cache.layers[layer_idx]

    def __getattr__(self, name: str) -> Any:  # anything else a layer asks of its cache, as the cache answers it
        if name == "cache":  # not set yet (a copy being built): no endless lookup
            raise AttributeError(name)
        return getattr(self.cache, name)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.update(key_states, value_states, *args, **kwargs)


def one_layer_views(kwargs: dict[str, Any], layer_idx: int | None) -> dict[str, Any]:
    """``kwargs`` with a plain transformers cache among them seen through :class:`OneLayerCache`; as they were when
    there is none, the layer's index is unknown, or the cache does more per update than its layer's (offloading)."""
    from transformers.cache_utils import Cache

    if layer_idx is None:
        return kwargs
    return {name: OneLayerCache(value, layer_idx)
            if isinstance(value, Cache) and not getattr(value, "offloading", False) and hasattr(value, "layers")
            else value for name, value in kwargs.items()}


def compiled_while_training(forward: Callable, layer_idx: int | None = None, **compile_kwargs: Any) -> Callable:
    """``forward`` under ``torch.compile`` when gradients are on, as it was otherwise: evaluation and generation
    (no gradients) would compile a new graph for nearly every length they meet, for minutes, to save little.
    ``layer_idx``: the block's index in its model's cache (see :class:`OneLayerCache`)."""
    from .switchback import refresh_int8_weights

    compiled = torch.compile(forward, **compile_kwargs)
    block = getattr(forward, "__self__", None)

    @functools.wraps(forward)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if block is not None:  # int8 copies of weights written in place since: quantized again, outside the graph
            refresh_int8_weights(block)
        return compiled(*args, **one_layer_views(kwargs, layer_idx))

    dispatch.compiled = compiled
    return dispatch
