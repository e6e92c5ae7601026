"""``eager_float32``: a transformers model's own eager attention, run in float32 for a bfloat16 model.

Transformers' eager attention in bfloat16 rounds the scores' weighted sum and the probabilities it backpropagates
through; SmolLM2's heads put nearly all their weight on one or two positions, where the softmax's gradient is a small
difference of large terms, so a bfloat16 step's gradients strayed far from float32's (``benchmarks/
soft_grad_precision.py``). Compiled layers brought them back, but not with int8 frozen matmuls beside them (relative
error 21 on one 4x step). This implementation casts the query, keys, values and mask to float32, calls the model
file's own ``eager_attention_forward`` (so a model's softcapping, sliding window or sinks stay its own) and casts the
output back. The attention's matmuls are a small share of a soft training step at these lengths.

Every model mmcompress loads can take it (loading registers it with transformers); for a model loaded elsewhere,
call :func:`register` first.

    llm.set_attn_implementation("eager_float32")        # or model_kwargs: {attn_implementation: eager_float32}
"""
from __future__ import annotations

import sys
from typing import Any

import torch

EAGER_FLOAT32 = "eager_float32"


def eager_float32_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any):
    """The eager attention of ``module``'s own model file, in float32; the output in the query's dtype."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(f"{type(module).__name__}'s model file has no eager_attention_forward to run in "
                                  f"float32; use attn_implementation eager or sdpa")
    mask = None if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask.float()
    out, weights = eager(module, query.float(), key.float(), value.float(),
                         attention_mask if mask is None else mask, *args, **kwargs)
    return out.to(query.dtype), weights


def register() -> None:
    """Make ``eager_float32`` an ``attn_implementation`` transformers knows, with the eager attention's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(EAGER_FLOAT32, eager_float32_attention)
    AttentionMaskInterface.register(EAGER_FLOAT32, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
