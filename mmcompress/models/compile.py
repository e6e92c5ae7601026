"""``torch.compile`` of a model's repeated blocks (its decoder layers), the unit that compiles well on CPU.

Inductor fuses each block's elementwise work (RMSNorm, rotary, SiLU, LoRA's casts and scaling) into C++ kernels;
on the 2-core CPU a ``meanpool`` training step ran 1.22x faster than eager (``benchmarks/soft_train_speed.py``). A whole
training step does not compile here: it switches adapters, builds caches and breaks the graph many times. Blocks
are found the way accelerate finds what it must not split across devices: the class names in each transformers
model's ``_no_split_modules``.

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


def compile_blocks(module: nn.Module, **compile_kwargs: Any) -> int:
    """Compile each repeated block of ``module`` in place, for the passes that train; returns how many.

    All blocks of a model share one forward, and dynamo keeps a bounded number of compiled versions per function
    (8 by default), after which it silently runs the rest eagerly; the limits are raised to cover every block.
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
            block.forward = compiled_while_training(block.forward, **compile_kwargs)
    return len(blocks)


def compiled_while_training(forward: Callable, **compile_kwargs: Any) -> Callable:
    """``forward`` under ``torch.compile`` when gradients are on, as it was otherwise: evaluation and generation
    (no gradients) would compile a new graph for nearly every length they meet, for minutes, to save little."""
    compiled = torch.compile(forward, **compile_kwargs)

    @functools.wraps(forward)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return (compiled if torch.is_grad_enabled() else forward)(*args, **kwargs)

    dispatch.compiled = compiled
    return dispatch
