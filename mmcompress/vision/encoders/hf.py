"""Hugging Face vision towers: ``CLIPVisionModel``, ``SiglipVisionModel``, and the tower inside a LLaVA-style VLM.

Features follow LLaVA's convention: ``hidden_states[layer]`` of the tower (``-2``: penultimate, LLaVA-1.5;
``-1``: last, LLaVA-NeXT-Interleave), with the CLS token split off (CLIP) or absent (SigLIP). Attention maps are
recomputed from the layer's ``q_proj``/``k_proj`` on its input, so they do not need ``attn_implementation="eager"``.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError, ModelNotFoundError
from ...image_io import CLIP_MEAN, CLIP_STD, load_images, pixel_values
from .base import EncoderOutput, VisionEncoder, attention_from_projections, square_grid


class HFVisionEncoder(VisionEncoder):
    """Any HF vision tower with ``.vision_model.encoder.layers`` (CLIP, SigLIP and their relatives).

    ``select="default"`` drops the CLS token (LLaVA-1.5), ``"full"`` keeps every token as a patch token.
    """

    kind = "hf"

    def __init__(self, tower: Any, layer: int = -2, select: str = "default", image_processor: Any = None):
        super().__init__()
        if select not in ("default", "full"):
            raise ConfigError(f"select must be 'default' (drop CLS) or 'full', got {select!r}")
        self.tower, self.layer, self.select_strategy = tower, layer, select
        self.image_processor = image_processor
        vm = getattr(tower, "vision_model", tower)
        self._layers = vm.encoder.layers
        n = len(self._layers)
        if not -(n + 1) <= layer <= n:
            raise ConfigError(f"layer={layer} is out of range for a tower with {n} layers")
        cfg = tower.config
        self._has_cls = hasattr(vm.embeddings, "class_embedding")
        self._patch = cfg.patch_size
        self._size = cfg.image_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, kind: str = "auto", layer: int = -2, select: str | None = None,
                        device: str = "cpu", dtype: Any = None) -> HFVisionEncoder:
        """Load a CLIP or SigLIP vision tower from a HF id or folder (``kind``: auto, clip, siglip)."""
        from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except OSError as e:
            raise ModelNotFoundError(f"cannot load vision model {name_or_path!r}: {e}") from None
        if kind == "auto":
            kind = "siglip" if "siglip" in config.model_type else "clip"
        model_cls = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}.get(kind)
        if model_cls is None:
            raise ConfigError(f"kind must be auto, clip or siglip, got {kind!r}")
        tower = model_cls.from_pretrained(name_or_path, dtype=dtype or torch.float32).to(device).eval()
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError):
            processor = None
        return cls(tower, layer=layer, select=select or ("full" if kind == "siglip" else "default"),
                   image_processor=processor)

    # ---------------------------------------------------------------------------------------------- shapes
    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def image_size(self) -> tuple[int, int]:
        return (self._size, self._size)

    @property
    def grid(self) -> tuple[int, int]:
        return (self._size // self._patch, self._size // self._patch)

    @property
    def num_patches(self) -> int:
        g = self.grid
        return g[0] * g[1] + (1 if self._has_cls and self.select_strategy == "full" else 0)

    # ------------------------------------------------------------------------------------------------ run
    def preprocess(self, images: Any) -> torch.Tensor:
        pil = load_images(images)
        if self.image_processor is not None:
            return self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        return pixel_values(pil, self._size, CLIP_MEAN, CLIP_STD)

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> EncoderOutput:
        self._check_pixels(pixel_values)
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ConfigError(f"this tower takes {self.image_size} images, got {tuple(pixel_values.shape[-2:])}; "
                              "use encode(images) to resize")
        n = len(self._layers)
        hs_index = self.layer % (n + 1)  # hidden_states[i] is the output of layer i-1 (0: embeddings)
        captured: dict[str, torch.Tensor] = {}
        handle = None
        if output_attentions:
            if hs_index == 0:
                raise ConfigError("the embedding layer has no attention map; pick a transformer layer")
            attn_module = self._layers[hs_index - 1].self_attn

            def grab(module, args, kwargs):
                captured["h"] = kwargs.get("hidden_states", args[0] if args else None)

            handle = attn_module.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = self.tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        finally:
            if handle is not None:
                handle.remove()
        x = out.hidden_states[hs_index]
        attentions = keys = None
        if output_attentions:
            m = self._layers[hs_index - 1].self_attn
            attentions, keys = attention_from_projections(captured["h"], m.q_proj, m.k_proj, m.num_heads,
                                                          getattr(m, "scale", None))
        prefix = 1 if self._has_cls and self.select_strategy == "default" else 0
        cls = x[:, 0] if self._has_cls else None
        grid = self.grid if prefix or not self._has_cls else square_grid(x.shape[1])
        return EncoderOutput(patch_tokens=x[:, prefix:], cls_token=cls, attentions=attentions, keys=keys,
                             grid=grid, num_prefix_tokens=prefix)


class LlavaTowerEncoder(HFVisionEncoder):
    """The vision tower of an HF ``LlavaForConditionalGeneration`` (or any model with ``.model.vision_tower``),
    with the model's own ``vision_feature_layer`` and ``vision_feature_select_strategy``."""

    kind = "llava"

    def __init__(self, vlm: Any, image_processor: Any = None):
        cfg = vlm.config
        layer = cfg.vision_feature_layer
        if not isinstance(layer, int):
            raise ConfigError("LLaVA models that concatenate several feature layers are not supported")
        inner = getattr(vlm, "model", vlm)
        tower = getattr(inner, "vision_tower", None)
        if tower is None:
            raise ConfigError(f"{type(vlm).__name__} has no vision_tower")
        super().__init__(tower, layer=layer, select=cfg.vision_feature_select_strategy, image_processor=image_processor)
