"""The image-encoder interface every backend implements.

An encoder turns images into **patch tokens** ``[B, N, D]`` (CLS and other prefix tokens removed) and, on request,
the signals that training-free reductions need from the same layer: the prefix (CLS) token, the attention map and
the attention keys. Attention is recomputed from the layer's own projections, so it works whatever attention
kernel (SDPA, flash) the backbone runs with.

    encoder = create_encoder("open_clip:ViT-S-32")
    out = encoder.encode([pil_image, "cat.png"], output_attentions=True)
    out.patch_tokens    # [B, 49, 384]
    out.cls_attention   # [B, 49]  attention the CLS token pays to each patch (heads averaged)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch of images.

    - ``patch_tokens``: ``[B, N, D]`` patch features of the chosen layer (prefix tokens removed).
    - ``cls_token``: ``[B, D]`` the CLS token of that layer (``None`` for towers without one, e.g. SigLIP).
    - ``attentions``: ``[B, H, L, L]`` attention probabilities of that layer over all ``L = P + N`` tokens, where
      ``P = num_prefix_tokens``; only when asked for.
    - ``keys``: ``[B, L, Dk]`` the attention keys of that layer (heads concatenated); ToMe's similarity metric.
    - ``grid``: ``(h, w)`` patch grid, ``h * w == N``.
    - ``num_heads``: attention heads of that layer (``None``: taken from ``attentions``), to split ``keys`` by head.
    """

    patch_tokens: torch.Tensor
    cls_token: torch.Tensor | None = None
    attentions: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0
    num_heads: int | None = None

    @property
    def num_patches(self) -> int:
        return self.patch_tokens.shape[1]

    @property
    def cls_attention(self) -> torch.Tensor | None:
        """``[B, N]`` attention the CLS token pays to each patch, averaged over heads.

        Towers without a CLS token use the mean attention each patch receives (VisionZip's choice for SigLIP).
        """
        if self.attentions is None:
            return None
        p = self.num_prefix_tokens
        if p:
            return self.attentions[:, :, 0, p:].mean(1)
        return self.attentions[:, :, :, p:].mean(dim=(1, 2))

    @property
    def patch_keys(self) -> torch.Tensor | None:
        return None if self.keys is None else self.keys[:, self.num_prefix_tokens:]

    def patch_keys_head_mean(self) -> torch.Tensor | None:
        """``[B, N, Dk / H]`` patch keys averaged over heads: the metric of ToMe (``k.mean(1)``) and VisionZip."""
        keys = self.patch_keys
        if keys is None:
            return None
        heads = self.num_heads or (self.attentions.shape[1] if self.attentions is not None else None)
        if heads is None:
            raise ConfigError("cannot average keys over heads: num_heads is unknown (give num_heads or attentions)")
        from einops import reduce

        return reduce(keys, "b n (h d) -> b n d", "mean", h=heads)

    def select(self, index: torch.Tensor) -> EncoderOutput:
        """Rows ``index`` of the batch (e.g. one image)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(self, patch_tokens=self.patch_tokens[index], cls_token=pick(self.cls_token),
                       attentions=pick(self.attentions), keys=pick(self.keys))


class VisionEncoder(nn.Module):
    """Base class: ``preprocess(images) -> pixels``, ``forward(pixels) -> EncoderOutput``, ``encode(images)``."""

    kind: str = ""
    randomly_initialised: bool = False  # True for a tower built without pretrained weights

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def num_patches(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (PIL, arrays, tensors, paths; one or a list) -> pixel tensor ``[B, 3, H, W]``."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> EncoderOutput:
        raise NotImplementedError

    def encode(self, images: Any, output_attentions: bool = False) -> EncoderOutput:
        """Preprocess and run: the one call most users need."""
        pixels = self.preprocess(images).to(self.device, self.dtype)
        return self(pixels, output_attentions=output_attentions)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ConfigError(
                f"{type(self).__name__} expects preprocessed pixels [B, 3, H, W]; got {shape}. "
                "Pass raw images to encode(...) instead."
            )


def square_grid(n: int) -> tuple[int, int]:
    side = int(math.isqrt(n))
    return (side, side) if side * side == n else (1, n)


def attention_from_projections(hidden: torch.Tensor, q_proj, k_proj, num_heads: int,
                               scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention ``[B, H, L, L]`` and keys ``[B, L, D]`` of a (non-causal) self-attention layer, from its
    input ``hidden`` (already layer-normed) and its query/key projections (callables)."""
    from einops import rearrange

    q, k = q_proj(hidden), k_proj(hidden)
    qh = rearrange(q, "b l (h d) -> b h l d", h=num_heads)
    kh = rearrange(k, "b l (h d) -> b h l d", h=num_heads)
    scale = scale if scale is not None else qh.shape[-1] ** -0.5
    probs = torch.softmax((qh @ kh.transpose(-1, -2)).float() * scale, dim=-1)
    return probs, k
