"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: the reduction runs on the tower's patch tokens *before* the projector
(where VisionZip and PruMerge put it), per tile for the any-resolution models.

Any-resolution (NeXT, OneVision): an image is a global view plus grid tiles; each tile is reduced on its own (its
own CLS attention), and the image's K tokens are shared by its tiles (:func:`split_budget_over_tiles`). The reduced
tiles go in tile order, without the unpadding and row-newline tokens of the full layout (a reduced tile no longer
has a grid to unpad). With no reduction the model's own ``get_image_features`` (packing, unpadding, newlines) runs.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..encoders.hf import LlavaTowerEncoder
from ..reduction.base import VisualReduction
from .base import ImageTokens, VLMRunner, split_budget_over_tiles


class Llava15Runner(VLMRunner):
    """LLaVA-1.5 style (``LlavaForConditionalGeneration``): one 336 px view per image."""

    family = "llava"
    model_types = ("llava",)

    def __init__(self, model: Any, processor: Any, template: str | None = None):
        super().__init__(model, processor, template)
        self.encoder = LlavaTowerEncoder(model)

    def tile_counts(self, processed: dict) -> list[int]:
        return [1] * processed["pixel_values"].shape[0]

    def own_features(self, processed: dict) -> list[torch.Tensor]:
        """All tokens of every image, as the model computes them: tower + projector."""
        out = self.encoder(processed["pixel_values"].to(self.device, self.encoder.dtype))
        return list(self.model.model.multi_modal_projector(out.patch_tokens))

    def flat_tiles(self, processed: dict) -> torch.Tensor:
        pixels = processed["pixel_values"]
        if pixels.ndim == 5:  # [images, max tiles, 3, H, W], padded: keep each image's own tiles
            pixels = torch.cat([p[:n] for p, n in zip(pixels, self.tile_counts(processed))])
        return pixels.to(self.device, self.encoder.dtype)

    def encode_images(self, processed: dict, compressor: VisualReduction | None,
                      tokens: int | None) -> list[ImageTokens]:
        if compressor is None:
            return [ImageTokens(f, f.shape[0]) for f in self.own_features(processed)]
        features = self.encoder(self.flat_tiles(processed), output_attentions=compressor.needs_attention)
        full = self.full_counts(processed)
        result, row = [], 0
        for image, tiles in enumerate(self.tile_counts(processed)):
            n = features.num_patches
            k = compressor.budget(n * tiles, tokens=tokens) if tokens is not None else compressor.budget(n * tiles)
            parts = []
            for tile, share in enumerate(split_budget_over_tiles(k, tiles)):
                if share:
                    parts.append(compressor.reduce(features.select(torch.tensor([row + tile])), share).tokens[0])
            row += tiles
            projected = self.model.model.multi_modal_projector(torch.cat(parts).to(self.encoder.dtype))
            result.append(ImageTokens(projected, full[image]))
        return result

    def full_counts(self, processed: dict) -> list[int]:
        """Each image's full placeholder count (what the processor expanded)."""
        return [self.encoder.num_patches] * processed["pixel_values"].shape[0]


class AnyResolutionRunner(Llava15Runner):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``) and LLaVA-OneVision: tiles per image."""

    family = "llava_next"
    model_types = ("llava_next", "llava_onevision")

    def tile_counts(self, processed: dict) -> list[int]:
        """Tiles of each image, as the model's ``get_image_features`` counts them."""
        import importlib

        module = importlib.import_module(type(self.model).__module__)
        cfg = self.model.config
        sizes = processed["image_sizes"]
        single = [True] * len(sizes)
        if "batch_num_images" in processed:  # OneVision: images of multi-image prompts are not tiled
            single = [int(n) == 1 for n in processed["batch_num_images"] for _ in range(int(n))]
        return [module.image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                                 patch_size=cfg.vision_config.image_size) if tiled else 1
                for s, tiled in zip(sizes, single)]

    def own_features(self, processed: dict) -> list[torch.Tensor]:
        kwargs = {k: processed[k] for k in ("image_sizes", "batch_num_images") if k in processed}
        out = self.model.model.get_image_features(processed["pixel_values"].to(self.device, self.encoder.dtype),
                                                  **kwargs, return_dict=True)
        return list(out.pooler_output)

    def full_counts(self, processed: dict) -> list[int]:
        with torch.no_grad():
            return [f.shape[0] for f in self.own_features(processed)]


def processor_for(model: Any, path: str) -> Any:
    """The model's processor from its folder. A LLaVA-1.5 folder saved with only a tokenizer and an image processor
    (older checkpoints, the test models) gets a ``LlavaProcessor`` completed from the model's config."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaProcessor

    cfg = model.config
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError):
        if cfg.model_type != "llava":
            raise
        processor = None
    if cfg.model_type != "llava" or getattr(processor, "patch_size", None) is not None:
        return processor
    if not isinstance(cfg.vision_feature_layer, int):
        raise ConfigError("LLaVA models that concatenate several feature layers are not supported")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=tokenizer,
                          patch_size=cfg.vision_config.patch_size,
                          vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                          image_token=tokenizer.convert_ids_to_tokens(cfg.image_token_id),
                          num_additional_image_tokens=1 if cfg.vision_feature_select_strategy == "default" else 0)
