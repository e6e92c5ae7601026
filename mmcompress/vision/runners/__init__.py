"""Runners for the HF vision-language families, picked from the model's config by :func:`create_vlm`:
LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3 and SmolVLM (see :mod:`.base` for the shared route)."""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError, ModelNotFoundError
from .base import ImageTokens, PreparedBatch, VLMRunner, split_budget_over_tiles
from .idefics3 import Idefics3Runner
from .llava import AnyResolutionRunner, Llava15Runner
from .qwen2_vl import Qwen2VLRunner

RUNNERS: tuple[type[VLMRunner], ...] = (Llava15Runner, AnyResolutionRunner, Qwen2VLRunner, Idefics3Runner)
SUPPORTED_MODEL_TYPES = tuple(t for runner in RUNNERS for t in runner.model_types)


def runner_class(model_type: str) -> type[VLMRunner]:
    for runner in RUNNERS:
        if model_type in runner.model_types:
            return runner
    raise ConfigError(f"model type {model_type!r} is not a supported vision-language family; supported: "
                      f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def create_vlm(model: Any, processor: Any = None, *, device: str = "cpu", dtype: Any = None,
               template: str | None = None, model_kwargs: dict[str, Any] | None = None) -> VLMRunner:
    """A runner for ``model``: a folder or HF id (its config picks the family; model and processor are loaded), or
    a loaded model with its ``processor``. ``model_kwargs`` go to ``from_pretrained`` (``device_map``,
    ``attn_implementation``, quantization...); with a ``device_map`` the model is left where accelerate put it."""
    if not isinstance(model, str):
        if processor is None:
            raise ConfigError("a loaded model needs its processor: create_vlm(model, processor)")
        return runner_class(model.config.model_type)(model, processor, template)
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ...models.loading import pick_device, pick_dtype, place_pretrained, resolve_model
    from .llava import processor_for

    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load a vision-language model from {model!r}: {e}") from None
    cls = runner_class(config.model_type)
    device = pick_device(device)
    loaded = place_pretrained(AutoModelForImageTextToText, path, model, device, pick_dtype(dtype, device), model_kwargs)
    try:
        processor = processor if processor is not None else processor_for(loaded, path)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load {config.model_type} processor from {model!r}: {e}") from None
    return cls(loaded, processor, template)


__all__ = ["AnyResolutionRunner", "Idefics3Runner", "ImageTokens", "Llava15Runner", "PreparedBatch", "Qwen2VLRunner", "RUNNERS",
           "SUPPORTED_MODEL_TYPES", "VLMRunner", "create_vlm", "runner_class", "split_budget_over_tiles"]
