"""Int8 matmuls for the frozen linear layers of a training step: SwitchBack (Wortsman et al. 2023, "Stable and
low-precision training for large-scale vision-language models"), vector-wise.

A soft compressor trains a small adapter on a frozen LLM, so nearly every matmul of its step is a frozen weight
times an activation (forward) or times an output gradient (the input-gradient half of the backward); frozen weights
need no weight gradient. SwitchBack runs exactly these two matmuls in int8: rows of the input (or of the output
gradient) are quantized to int8 by their absolute maximum, the weight by its rows for the forward and by its columns
for the input gradient, products accumulate in int32 and are scaled back. On a CPU with AVX-512 VNNI an int8 matmul
does twice the multiply-adds of a bfloat16 one per instruction (``torch._int_mm``: 2.0x at SmolLM2's shapes on the
2-core AMD EPYC, ``benchmarks/soft_train_speed.py``).

Reference: bitsandbytes, commit 1273a5d0617ba12899e53936803ed2cf0794fadf, ``bitsandbytes/nn/triton_based_modules.py``
lines 71-110 (``_switchback_vectorrize``; Triton kernels, GPU only). Deliberate differences, for a frozen weight on
a CPU: the int8 weights are quantized once and kept (re-quantized only when the weight is written in place) instead
of at every call; there is no weight-gradient branch; and the output embeddings (the LM head) keep their own
precision, as int8 loaders leave them by default (transformers' ``llm_int8_skip_modules``), since the loss reads
their logits directly.

Only passes with gradients on use it: evaluation and generation read the original weights, so a model trained this
way is measured as it is used.

    from mmcompress.models.switchback import int8_frozen_linears
    int8_frozen_linears(module)     # every frozen nn.Linear inside ``module`` (not the LM head); returns how many
"""
from __future__ import annotations

import functools

import torch
from torch import nn


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows of a 2-d tensor and their float32 scales (``x ~ q * scale``), each row by its absolute maximum,
    rounded as bitsandbytes' ``quantize_rowwise`` does (``round(127 * (x / max))``)."""
    row_max = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.round(127 * (x.float() / row_max)).to(torch.int8), row_max / 127


class SwitchBackMatmul(torch.autograd.Function):
    """``x @ W.T`` for a frozen ``W``, forward and input gradient in int8 (row-wise ``x`` and output gradient)."""

    @staticmethod
    def forward(ctx, x, weight_rows_t, row_scale, weight_cols, col_scale):
        # weight_rows_t: W quantized by its rows, transposed to (in, out); weight_cols: W quantized by its columns
        x_rows = x.reshape(-1, x.shape[-1])
        x_q, x_scale = quantize_rows(x_rows)
        out = torch._int_mm(x_q, weight_rows_t).float() * x_scale * row_scale
        ctx.save_for_backward(weight_cols, col_scale)
        ctx.dtype = x.dtype
        return out.to(x.dtype).reshape(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_out):
        weight_cols, col_scale = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_q, grad_scale = quantize_rows(grad_rows)
        grad_x = torch._int_mm(grad_q, weight_cols).float() * grad_scale * col_scale
        return grad_x.to(ctx.dtype).reshape(*grad_out.shape[:-1], -1), None, None, None, None


class Int8Weights:
    """A frozen weight's two int8 copies and scales, rebuilt when the weight is written in place."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.refresh()

    def refresh(self) -> None:
        w = self.weight.detach()
        rows_q, row_scale = quantize_rows(w)  # (out, in), scales (out, 1)
        cols_q, col_scale = quantize_rows(w.t())  # (in, out), scales (in, 1)
        self.rows_t, self.row_scale = rows_q.t().contiguous(), row_scale.reshape(1, -1)
        self.cols, self.col_scale = cols_q.t().contiguous(), col_scale.reshape(1, -1)
        self.version = (w.data_ptr(), w._version)

    def current(self) -> Int8Weights:
        # checked on eager calls only: inside a compiled layer the check would break the graph, so compiled layers
        # (mmcompress.models.compile) call refresh_int8_weights before entering theirs
        w = self.weight
        if not torch.compiler.is_compiling() and (w.data_ptr(), w._version) != self.version:
            self.refresh()
        return self


def switchback_forward(linear: nn.Linear, forward):
    """``linear``'s forward with its matmul in int8 while gradients are on, as it was otherwise."""
    int8 = Int8Weights(linear.weight)

    @functools.wraps(forward)
    def dispatch(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or linear.weight.requires_grad:  # a weight that trains needs its gradient
            return forward(x)
        w = int8.current()
        out = SwitchBackMatmul.apply(x, w.rows_t, w.row_scale, w.cols, w.col_scale)
        return out if linear.bias is None else out + linear.bias

    dispatch.int8_weights = int8
    return dispatch


def refresh_int8_weights(module: nn.Module) -> None:
    """Quantize again the int8 copies of the converted layers inside ``module`` whose weights were written in place
    since (what a compiled graph cannot check from inside)."""
    for sub in module.modules():
        int8 = getattr(sub.forward, "int8_weights", None)
        if int8 is not None:
            int8.current()


def int8_frozen_linears(module: nn.Module) -> int:
    """Give every frozen ``nn.Linear`` on the CPU inside ``module`` SwitchBack int8 matmuls, in place; returns how
    many. The output embeddings of each model inside keep their precision; trainable layers (adapters) are left as
    they are. State dicts do not change: the int8 copies are not buffers."""
    heads = {id(head) for head in map(_output_embeddings, module.modules()) if head is not None}
    converted = 0
    for sub in module.modules():
        if (type(sub) is nn.Linear and id(sub) not in heads and not sub.weight.requires_grad
                and sub.weight.device.type == "cpu" and not hasattr(sub.forward, "int8_weights")):
            sub.forward = switchback_forward(sub, sub.forward)
            converted += 1
    return converted


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    try:
        return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    except (AttributeError, NotImplementedError):  # transformers base classes without a head
        return None
