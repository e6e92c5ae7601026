"""FastV (Chen et al., 2024; pkunlp-icler/FastV): prune image tokens *inside* the language model. After layer
``layer`` (FastV's K, default 2) only the image tokens that received the most attention from the last prompt token
in layer ``layer - 1`` (heads averaged) go on; text tokens are never dropped and keep their original positions.

The pruning is physical (later layers see a shorter sequence and cache fewer keys), so prefill is cheaper. It is a
set of forward pre-hooks installed by a context manager that always removes them, even when the forward raises::

    fastv = create_compressor("fastv", layer=2, rate=0.5)
    with fastv.apply(model, image_mask):        # image_mask: [B, L] True at image-token positions of the prompt
        model.generate(inputs_embeds=..., ...)

The attention score is recomputed from the layer's own ``q_proj``/``k_proj`` and rotary embedding, so it works with
SDPA or flash attention (the FastV code needs eager attention for this). Decoder layers with Llama-style attention
(Llama, Mistral, Qwen2/3, SmolLM, Gemma) are supported.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...budget import topk_indices
from ...errors import BudgetError, ConfigError
from ...registry import register_compressor
from .base import ReductionConfig, VisualReduction


@dataclass
class FastVConfig(ReductionConfig):
    tokens: int | None = None  # image tokens kept per image after ``layer``; None: ``rate`` of them
    rate: float = 0.5  # FastV's R = 50%
    layer: int = 2  # FastV's K

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer < 1:
            raise ConfigError(f"layer must be >= 1 (pruning needs the attention of layer - 1), got {self.layer}")


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM or VLM (the first ``layers`` ModuleList whose blocks have ``self_attn``)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) \
                and hasattr(module[0], "self_attn") and "vision" not in name:
            return module
    raise ConfigError(f"cannot find decoder layers with self_attn in {type(model).__name__}")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def last_token_attention(attn: nn.Module, hidden: torch.Tensor, position_embeddings: Any,
                         attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, L]``: attention the last position pays to every position in a Llama-style attention module, averaged
    over heads, computed from the module's projections (``hidden`` is the module's input)."""
    b, length, _ = hidden.shape
    head_dim = attn.head_dim
    q = attn.q_proj(hidden[:, -1:]).view(b, 1, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, length, -1, head_dim).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if position_embeddings is not None:
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q = q * cos[:, :, -1:] + _rotate_half(q) * sin[:, :, -1:]
        k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query attention
    logits = (q @ k.transpose(-1, -2)).float() * getattr(attn, "scaling", head_dim ** -0.5)  # [B, H, 1, L]
    if attention_mask is not None and attention_mask.ndim == 4:
        row = attention_mask[:, :, -1:, :length]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
    return logits.softmax(-1).mean(1).squeeze(1)


@contextmanager
def fastv_pruning(model: nn.Module, image_mask: torch.Tensor, keep: int, layer: int = 2):
    """Install FastV on ``model`` for one prompt: keep ``keep`` image tokens per row (pooled over all images of the
    row) after decoder layer ``layer``. Hooks are removed on exit, whatever happens inside."""
    layers = find_decoder_layers(model)
    if not 1 <= layer < len(layers):
        raise ConfigError(f"layer must be between 1 and {len(layers) - 1} for this model, got {layer}")
    image_mask = image_mask.bool()
    n_image = int(image_mask.sum(-1).min())
    if int(image_mask.sum(-1).max()) != n_image:
        raise ConfigError("FastV needs the same number of image tokens in every row of the batch")
    if not 1 <= keep <= n_image:
        raise BudgetError(f"cannot keep {keep} of {n_image} image tokens")
    state: dict[str, Any] = {"length": image_mask.shape[1], "keep_index": None}

    def score(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if state["keep_index"] is not None or hidden.shape[1] != state["length"]:
            return None  # decoding steps, or already decided
        attn = last_token_attention(module, hidden, kwargs.get("position_embeddings"), kwargs.get("attention_mask"))
        mask = image_mask.to(attn.device)
        image_scores = attn.masked_fill(~mask, float("-inf"))
        kept_image = torch.zeros_like(mask).scatter(1, topk_indices(image_scores, keep), True)
        keep_rows = (~mask) | kept_image
        state["keep_index"] = keep_rows.nonzero()[:, 1].view(mask.shape[0], -1)  # [B, L'] in order
        state["scores"] = attn.detach()
        return None

    def prune(module, args, kwargs):
        index = state["keep_index"]
        if index is None:
            return None
        length = state["length"]
        args = list(args)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden.shape[1] == length:  # first pruned layer of the prefill
            hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
        else:
            args[0] = hidden
        pe = kwargs.get("position_embeddings")
        if pe is not None and pe[0].shape[1] == length:
            # rotary tables are computed once for the batch ([1, L, D] when rows share positions): expand first
            kwargs["position_embeddings"] = tuple(
                t.expand(index.shape[0], -1, -1).gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in pe)
        pid = kwargs.get("position_ids")
        if isinstance(pid, torch.Tensor) and pid.shape[-1] == length:
            kwargs["position_ids"] = pid.expand(index.shape[0], -1).gather(1, index)
        cp = kwargs.get("cache_position")
        if isinstance(cp, torch.Tensor) and cp.shape[-1] == length:
            kwargs["cache_position"] = torch.arange(index.shape[1], device=cp.device)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 4:
            kwargs["attention_mask"] = _prune_mask(mask, index, length)
        return tuple(args), kwargs

    handles = [layers[layer - 1].self_attn.register_forward_pre_hook(score, with_kwargs=True)]
    try:
        for block in layers[layer:]:
            handles.append(block.register_forward_pre_hook(prune, with_kwargs=True))
        yield state
    finally:
        for h in handles:
            h.remove()


def _prune_mask(mask: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """Drop the pruned prompt positions from a 4D mask ``[B, 1, Q, K]``: key columns always, query rows when the
    queries are the full prompt (prefill)."""
    b = index.shape[0]
    extra = mask.shape[-1] - length
    cols = index if extra <= 0 else torch.cat(
        [index, torch.arange(length, mask.shape[-1], device=index.device).expand(b, -1)], dim=1)
    mask = mask.expand(b, -1, -1, -1)
    mask = mask.gather(3, cols.view(b, 1, 1, -1).expand(-1, mask.shape[1], mask.shape[2], -1))
    if mask.shape[2] == length:
        mask = mask.gather(2, index.view(b, 1, -1, 1).expand(-1, mask.shape[1], -1, mask.shape[3]))
    return mask


@register_compressor("fastv")
class FastV(VisualReduction):
    """FastV: prune image tokens inside the LLM after layer k by the last token's attention (use with a VLM)."""

    config_class = FastVConfig
    prunes_inside_llm = True

    def reduce_to(self, features, k: int):
        raise ConfigError("FastV prunes inside the language model: use it with a VLM "
                          "(mmcompress.vision.runners.create_vlm or `mmcompress compress --model <vlm>`)")

    def compress(self, prompt: Any, **kwargs: Any):
        return self.reduce_to(None, 0)

    def apply(self, model: nn.Module, image_mask: torch.Tensor, images: int = 1):
        """Context manager pruning ``model`` for one prompt whose image tokens are ``image_mask`` (``images`` of
        them per row share the budget: ``tokens * images`` or ``rate`` of all image tokens are kept)."""
        n_image = int(image_mask.bool().sum(-1).min())
        per_image = n_image // max(1, images)
        keep = self.budget(per_image) * max(1, images)
        return fastv_pruning(model, image_mask, keep, self.config.layer)
