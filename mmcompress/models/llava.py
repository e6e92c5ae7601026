"""Loading an HF LLaVA-style VLM (``LlavaForConditionalGeneration``) with its tokenizer and image processor: used by
the VLM runner (:class:`~mmcompress.vision.vlm.LlavaRunner`) and by the ``llava:`` image-encoder backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelNotFoundError


@dataclass
class LlavaModel:
    model: Any
    tokenizer: Any
    image_processor: Any = None  # None when the checkpoint has no image processor config


def load_llava(name_or_path: str, device: str = "cpu", dtype: Any = None) -> LlavaModel:
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from .loading import pick_device, pick_dtype, resolve_model

    path = resolve_model(name_or_path)
    device = pick_device(device)
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=pick_dtype(dtype, device)).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load a LLaVA model from {name_or_path!r}: {e}") from None
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        processor = None
    return LlavaModel(model, tokenizer, processor)
