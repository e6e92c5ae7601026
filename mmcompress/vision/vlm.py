"""Running an HF LLaVA-style VLM with compressed images.

:class:`LlavaRunner` wraps any ``LlavaForConditionalGeneration`` (a llava-hf checkpoint, or a tiny random one in
tests). For each prompt it

1. checks the ``<image>`` markers against the images (no markers at all: one ``<image>`` per image is put first),
2. runs the model's own vision tower (its ``vision_feature_layer`` / ``select_strategy``),
3. reduces each image's patch tokens to K with a training-free reduction (VisionZip, PruMerge, ToMe, random,
   strided, pooling) *before* the projector, as VisionZip and PruMerge do,
4. writes K ``<image>`` placeholders per image, scatters the projected tokens into the input embeddings and calls
   ``generate(inputs_embeds=...)`` (the route checked in the design notes, section 4.3).

FastV instead keeps every image token at the input and prunes inside the LLM (see
:mod:`mmcompress.vision.reduction.fastv`). :class:`VLMOutput` reports the visual tokens before and after.

    runner = LlavaRunner.from_pretrained("llava-hf/llava-1.5-7b-hf")
    out = runner.generate("USER: <image>\\nWhat is shown? ASSISTANT:", images=["cat.png"],
                          compressor=create_compressor("visionzip", tokens=64))
    out.text, out.visual_tokens, out.visual_tokens_full
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, InvalidPromptError
from ..prompt import IMAGE_TOKEN, Prompt
from .encoders.hf import LlavaTowerEncoder
from .reduction.base import VisualReduction
from .reduction.fastv import FastV


@dataclass
class VLMInputs:
    """What goes into the language model for one prompt."""

    inputs_embeds: torch.Tensor  # [1, L, D]
    attention_mask: torch.Tensor  # [1, L]
    input_ids: torch.Tensor  # [1, L] (image positions hold the image token id)
    image_mask: torch.Tensor  # [1, L] True at image-token positions
    num_images: int
    patches_per_image: int
    tokens_per_image: int


@dataclass
class VLMOutput:
    """Generated text plus the visual-token accounting of one prompt.

    ``visual_tokens_full``: image tokens the model would take uncompressed (all images); ``visual_tokens``: image
    tokens that entered the LLM; ``visual_tokens_after_prune``: image tokens left after FastV's layer (equals
    ``visual_tokens`` for methods that compress before the LLM).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    visual_tokens_full: int
    visual_tokens: int
    visual_tokens_after_prune: int
    method: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_saved(self) -> int:
        return self.visual_tokens_full - self.visual_tokens_after_prune

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "method": self.method, "prompt_tokens": self.prompt_tokens,
                "visual_tokens_full": self.visual_tokens_full, "visual_tokens": self.visual_tokens,
                "visual_tokens_after_prune": self.visual_tokens_after_prune, "tokens_saved": self.tokens_saved,
                "timings": {k: round(v, 6) for k, v in self.timings.items()}}


class LlavaRunner:
    """An HF LLaVA model, its tokenizer and image processor, run with K compressed tokens per image."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any = None, template: str | None = None):
        if not hasattr(model, "config") or not hasattr(model.config, "image_token_id"):
            raise ConfigError(f"{type(model).__name__} is not a LLaVA-style model (its config has no image_token_id)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template  # e.g. "USER: {prompt} ASSISTANT:"; None: the prompt as given
        self.encoder = LlavaTowerEncoder(model, image_processor=image_processor)
        self.image_token_id = model.config.image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: Any = None,
                        template: str | None = None) -> LlavaRunner:
        from ..models.llava import load_llava

        vlm = load_llava(name_or_path, device, dtype)
        return cls(vlm.model, vlm.tokenizer, vlm.image_processor, template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def patches_per_image(self) -> int:
        return self.encoder.num_patches

    # ------------------------------------------------------------------------------------------------ inputs
    def prepare(self, prompt: str, images: Any = None, compressor: Any = None, tokens: int | None = None) -> VLMInputs:
        """Validate, encode, compress and embed one prompt (see the module docstring)."""
        images = _as_list(images)
        if not isinstance(prompt, str):
            raise InvalidPromptError(f"the prompt must be a str with {IMAGE_TOKEN} markers, got {type(prompt).__name__}")
        if images and IMAGE_TOKEN not in prompt:
            prompt = (IMAGE_TOKEN + "\n") * len(images) + prompt  # LLaVA's convention: images first
        parsed = Prompt.from_interleaved(prompt, images)  # checks the marker count
        pics = parsed.images
        if not pics:
            raise InvalidPromptError(f"no images: give images for the {IMAGE_TOKEN} markers, or use a text model")
        model = self.model
        with torch.no_grad():
            pixels = self.encoder.preprocess(pics).to(self.device, self.encoder.dtype)
            needs_attention = isinstance(compressor, VisualReduction) and compressor.needs_attention
            features = self.encoder(pixels, output_attentions=needs_attention)
            n = features.num_patches
            if isinstance(compressor, VisualReduction) and not isinstance(compressor, FastV):
                k = compressor.budget(n, tokens=tokens) if tokens is not None else compressor.budget(n)
                vision_tokens = compressor.reduce(features, k).tokens
            elif compressor is None or isinstance(compressor, FastV):
                vision_tokens = features.patch_tokens
            else:
                raise ConfigError(f"{type(compressor).__name__} is not a visual-token reduction")
            projected = model.model.multi_modal_projector(vision_tokens.to(self.encoder.dtype))
        k = projected.shape[1]
        text = parsed.render(image_token=self.image_token * k)
        if self.template:
            text = self.template.format(prompt=text)
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.device)
        image_mask = ids == self.image_token_id
        if int(image_mask.sum()) != len(pics) * k:
            raise InvalidPromptError(
                f"the tokenized prompt has {int(image_mask.sum())} image tokens, expected {len(pics)} x {k}; "
                f"does the text contain {self.image_token!r} itself?")
        embeds = model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds),
                                       projected.reshape(-1, projected.shape[-1]).to(embeds.dtype))
        return VLMInputs(embeds, torch.ones_like(ids), ids, image_mask, len(pics), n, k)

    # ---------------------------------------------------------------------------------------------- running
    def forward(self, inputs: VLMInputs, compressor: Any = None):
        """One prefill forward pass (returns the model output; FastV applied when ``compressor`` is FastV)."""
        with torch.no_grad(), self._llm_hook(inputs, compressor):
            return self.model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask)

    def generate(self, prompt: str, images: Any = None, compressor: Any = None, tokens: int | None = None,
                 max_new_tokens: int = 32, **generate_kwargs: Any) -> VLMOutput:
        """Greedy (by default) generation for one prompt with compressed images."""
        t0 = time.perf_counter()
        inputs = self.prepare(prompt, images, compressor, tokens)
        t1 = time.perf_counter()
        generate_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad(), self._llm_hook(inputs, compressor) as state:
            out = self.model.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                      max_new_tokens=max_new_tokens, pad_token_id=pad, **generate_kwargs)
        t2 = time.perf_counter()
        new_ids = out[0].tolist()
        used = inputs.num_images * inputs.tokens_per_image
        after = used
        if isinstance(compressor, FastV) and state is not None and state.get("keep_index") is not None:
            after = int(state["keep_index"].shape[1]) - int((~inputs.image_mask).sum())
        return VLMOutput(
            text=self.tokenizer.decode(new_ids, skip_special_tokens=True), token_ids=new_ids,
            prompt_tokens=int(inputs.input_ids.shape[1]), visual_tokens_full=inputs.num_images * inputs.patches_per_image,
            visual_tokens=used, visual_tokens_after_prune=after,
            method=getattr(compressor, "name", None), timings={"prepare": t1 - t0, "generate": t2 - t1, "total": t2 - t0})

    def _llm_hook(self, inputs: VLMInputs, compressor: Any):
        from contextlib import nullcontext

        if isinstance(compressor, FastV):
            return compressor.apply(self.model, inputs.image_mask, images=inputs.num_images)
        return nullcontext()


def _as_list(images: Any) -> list:
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]
