"""open_clip vision towers by name: ``create_model_and_transforms(name, pretrained=tag or None)``.

Patch tokens come from the visual transformer's blocks (``layer=-1``: the final tokens after ``ln_post``, what
``visual.output_tokens = True`` returns and OpenFlamingo uses; ``layer=-2``: the penultimate block, LLaVA's
choice). Only the vision tower is kept; the text tower is dropped after construction.

Custom architectures are registered with :func:`register_open_clip_config` (a dict in open_clip's own config
format), e.g. the small ViTs shipped here for CPU training on 32x32 images.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from ...errors import ConfigError, ModelNotFoundError
from ...image_io import load_images
from .base import EncoderOutput, VisionEncoder, attention_from_projections

logger = logging.getLogger(__name__)

# A text tower just big enough for open_clip to build a CLIP around a custom vision tower (it is dropped).
_STUB_TEXT = {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

# Small ViTs for CPU work on small images (random init; no pretrained weights exist for these).
TOOLKIT_CONFIGS: dict[str, dict[str, Any]] = {
    # 32x32 input, 4x4 patches -> 64 patch tokens: CIFAR-sized images at full resolution
    "mmc-vit-tiny-p4-32": {"embed_dim": 128, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128,
                                                             "layers": 4, "head_width": 32, "mlp_ratio": 2.0}},
    # the same grid, narrower and shallower: what a shared 2-core CPU trains in minutes
    "mmc-vit-nano-p4-32": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64,
                                                            "layers": 3, "head_width": 32, "mlp_ratio": 2.0}},
    # 64x64 input, 8x8 patches -> 64 tokens
    "mmc-vit-tiny-p8-64": {"embed_dim": 192, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192,
                                                             "layers": 4, "head_width": 48, "mlp_ratio": 2.0}},
    # for tests: 2 layers of width 32
    "mmc-vit-micro": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32,
                                                       "layers": 2, "head_width": 16, "mlp_ratio": 2.0}},
}


def register_open_clip_config(name: str, config: dict[str, Any]) -> None:
    """Make an architecture available to ``open_clip.create_model_and_transforms(name)``.

    ``config`` has open_clip's keys (``embed_dim``, ``vision_cfg``, optionally ``text_cfg``; a stub text tower is
    added when it is missing, since only the vision tower is used).
    """
    from open_clip import factory

    if "vision_cfg" not in config:
        raise ConfigError(f"open_clip config {name!r} needs a 'vision_cfg'")
    cfg = copy.deepcopy(config)
    cfg.setdefault("embed_dim", cfg["vision_cfg"].get("width", 512))
    cfg.setdefault("text_cfg", dict(_STUB_TEXT))
    factory._MODEL_CONFIGS[name] = cfg  # open_clip's own registry (add_model_config does the same from files)


def _ensure_toolkit_configs() -> None:
    from open_clip import factory

    for name, cfg in TOOLKIT_CONFIGS.items():
        if name not in factory._MODEL_CONFIGS:
            register_open_clip_config(name, cfg)


class OpenCLIPEncoder(VisionEncoder):
    """An open_clip ViT tower. ``pretrained`` is an open_clip tag (``"laion2b_s34b_b79k"``), a local checkpoint
    file, or ``None`` for random init (the only choice offline here)."""

    kind = "open_clip"

    def __init__(self, name: str = "ViT-B-16", pretrained: str | None = None, layer: int = -1,
                 device: str = "cpu", image_size: int | None = None, model: Any = None, preprocess: Any = None):
        super().__init__()
        import open_clip

        _ensure_toolkit_configs()
        self.name, self.pretrained, self.layer = name, pretrained, layer
        self.randomly_initialised = model is None and not pretrained
        if model is None:
            if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
                raise ModelNotFoundError(
                    f"open_clip has no model {name!r}; known: {', '.join(open_clip.list_models()[:12])}, ... "
                    "(or register one with register_open_clip_config)")
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained or None, device=device, force_image_size=image_size)
            except RuntimeError as e:  # unknown tag, unreachable hub
                raise ModelNotFoundError(f"cannot create open_clip {name!r} (pretrained={pretrained!r}): {e}") from None
        self.visual = model.visual if hasattr(model, "visual") else model
        if not hasattr(self.visual, "transformer") or not hasattr(self.visual, "class_embedding"):
            raise ConfigError(f"open_clip model {name!r} has no ViT tower (ResNet towers give no patch tokens)")
        self._transform = preprocess
        n_layers = len(self.visual.transformer.resblocks)
        if not -n_layers <= layer < n_layers:
            raise ConfigError(f"layer={layer} is out of range for {name!r} ({n_layers} blocks)")

    # ---------------------------------------------------------------------------------------------- shapes
    @property
    def hidden_size(self) -> int:
        return self.visual.transformer.width

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.visual.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    # ------------------------------------------------------------------------------------------------ run
    def preprocess(self, images: Any) -> torch.Tensor:
        if self._transform is None:
            from ...image_io import pixel_values

            return pixel_values(images, self.image_size)
        return torch.stack([self._transform(im) for im in load_images(images)])

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> EncoderOutput:
        self._check_pixels(pixel_values)
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ConfigError(f"{self.name} takes {self.image_size} images, got pixels of size "
                              f"{tuple(pixel_values.shape[-2:])}; use encode(images) to resize")
        visual = self.visual
        blocks = visual.transformer.resblocks
        last = self.layer % len(blocks)
        x = visual._embeds(pixel_values)
        attentions = keys = None
        for i, block in enumerate(blocks[: last + 1]):
            if i == last and output_attentions:
                attentions, keys = _block_attention(block, x)
            x = block(x)
        if self.layer == -1:
            x = visual.ln_post(x)  # what visual.output_tokens returns: final tokens after ln_post, unprojected
        return EncoderOutput(patch_tokens=x[:, 1:], cls_token=x[:, 0], attentions=attentions, keys=keys,
                             grid=self.grid, num_prefix_tokens=1)


def _block_attention(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention probabilities ``[B, H, L, L]`` and keys of an open_clip ResidualAttentionBlock for input ``x``."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise ConfigError(f"attention maps are not available for {type(block).__name__} blocks")
    d = attn.embed_dim
    w, b = attn.in_proj_weight, attn.in_proj_bias
    b = b if b is not None else torch.zeros(3 * d, device=x.device, dtype=x.dtype)
    h = block.ln_1(x)
    return attention_from_projections(
        h, lambda t: torch.nn.functional.linear(t, w[:d], b[:d]),
        lambda t: torch.nn.functional.linear(t, w[d:2 * d], b[d:2 * d]), attn.num_heads)
