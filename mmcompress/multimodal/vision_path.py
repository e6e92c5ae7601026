"""Image embedders for interleaved prompts: image encoder + adapter, ``images -> [n, K_img, D_llm]``.

- :class:`EncoderAdapterPath`: any :class:`~mmcompress.vision.encoders.VisionEncoder` (open_clip, HF CLIP/SigLIP)
  followed by a vision adapter (MLP projector, Perceiver resampler, Q-Former, pooling). The encoder is frozen (no
  pretrained weights exist offline, and a trained LLaVA keeps its tower frozen too); the adapter trains.
- :class:`LlavaPath`: an HF ``LlavaForConditionalGeneration``'s own vision tower + multi-modal projector, through
  ``get_image_features``; the projector trains, the tower stays frozen.

Both follow :class:`~mmcompress.multimodal.embedding.ImageEmbedder`: ``preprocess`` (CPU, in a collate function)
and ``forward(pixels)``. ``reduce_to`` (optional) average-pools each image's K adapter tokens down to fewer tokens
(the M3 / Matryoshka pooling), the training-free "fewer visual tokens" hard compression of images.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pool_image_tokens(features: torch.Tensor, tokens: int) -> torch.Tensor:
    """``[n, K, D] -> [n, tokens, D]`` by average pooling (on the 2-D grid when both counts are squares, as M3 does)."""
    from ..vision.adapters.pool import pool_tokens

    return features if tokens >= features.shape[1] else pool_tokens(features, int(tokens))


class EncoderAdapterPath(nn.Module):
    """``adapter(encoder(pixels).patch_tokens)``; the encoder is frozen unless ``train_encoder``."""

    def __init__(self, encoder: nn.Module, adapter: nn.Module, *, train_encoder: bool = False,
                 reduce_to: int | None = None):
        super().__init__()
        self.encoder, self.adapter = encoder, adapter
        self.encoder.requires_grad_(train_encoder)
        self.reduce_to = reduce_to
        num_patches = int(encoder.num_patches)
        self.adapter_tokens = int(adapter.num_output_tokens(num_patches)) if hasattr(adapter, "num_output_tokens") \
            else num_patches

    @property
    def tokens_per_image(self) -> int:
        return min(self.adapter_tokens, self.reduce_to) if self.reduce_to else self.adapter_tokens

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return self.encoder.preprocess(list(images))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        param = next(self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and param.requires_grad):
            patches = self.encoder(pixels.to(param.device, param.dtype)).patch_tokens
        feats = self.adapter(patches)
        return pool_image_tokens(feats, self.reduce_to) if self.reduce_to else feats


class LlavaPath(nn.Module):
    """The image path of an HF LLaVA model (tower + projector). The model is held by reference, not registered,
    so its parameters keep their names inside the LLM they belong to."""

    def __init__(self, llava: nn.Module, *, reduce_to: int | None = None):
        super().__init__()
        object.__setattr__(self, "_llava", llava)
        vision = llava.config.vision_config
        self.image_size = int(vision.image_size)
        patches = (self.image_size // int(vision.patch_size)) ** 2
        strategy = getattr(llava.config, "vision_feature_select_strategy", "default")
        self.adapter_tokens = patches if strategy == "default" else patches + 1
        self.reduce_to = reduce_to

    @property
    def tokens_per_image(self) -> int:
        return min(self.adapter_tokens, self.reduce_to) if self.reduce_to else self.adapter_tokens

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        import numpy as np

        from ..image_io import to_pil_rgb

        mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
        out = []
        for im in images:
            pil = to_pil_rgb(im).resize((self.image_size, self.image_size))
            x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
            out.append((x - mean) / std)
        return torch.stack(out)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self._llava.get_base_model() if hasattr(self._llava, "get_base_model") else self._llava
        inner = model.model
        param = next(inner.multi_modal_projector.parameters())
        out = inner.get_image_features(pixel_values=pixels.to(param.device, param.dtype))
        feats = getattr(out, "pooler_output", out)
        feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
        return pool_image_tokens(feats, self.reduce_to) if self.reduce_to else feats


def is_llava(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in {"llava", "llava_next", "llava_onevision"} or \
        hasattr(getattr(model, "model", None), "multi_modal_projector")


def build_encoder_adapter(encoder_spec: Any, adapter_spec: Any, out_dim: int, tokens: int | None,
                          adapter_kwargs: dict[str, Any] | None = None, *, train_encoder: bool = False,
                          reduce_to: int | None = None) -> EncoderAdapterPath:
    """An :class:`EncoderAdapterPath` from the vision family's registries (``open_clip:...`` + ``perceiver`` etc.)."""
    try:
        from ..vision.adapters import create_adapter
        from ..vision.encoders import create_encoder
    except ImportError as e:  # pragma: no cover - the vision family ships with the toolkit
        raise ConfigError(f"interleaved prompts need the vision family (mmcompress.vision): {e}") from None
    encoder = create_encoder(encoder_spec) if not isinstance(encoder_spec, nn.Module) else encoder_spec
    if isinstance(adapter_spec, nn.Module):
        adapter = adapter_spec
    else:
        adapter = create_adapter(adapter_spec, in_dim=int(encoder.hidden_size), out_dim=int(out_dim), tokens=tokens,
                                 **dict(adapter_kwargs or {}))
    return EncoderAdapterPath(encoder, adapter, train_encoder=train_encoder, reduce_to=reduce_to)
