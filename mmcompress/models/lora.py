"""LoRA on a causal LM with peft, from any config that carries ``lora_r``, ``lora_alpha``, ``lora_dropout`` and
``lora_targets`` (the soft encoder, GIST's LoRA fine-tuning, the interleaved decoder tuning)."""
from __future__ import annotations

from typing import Any

from torch import nn


def lora_config(config: Any, rank: int | None = None):
    """peft's LoraConfig from the config's LoRA fields; ``rank`` makes a second adapter of that rank with scaling 1
    (alpha = rank), whatever the first adapter's rank and alpha."""
    from peft import LoraConfig

    targets = config.lora_targets
    rank, alpha = (int(config.lora_r), int(config.lora_alpha)) if rank is None else (int(rank), int(rank))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(config.lora_dropout),
                      target_modules=targets if isinstance(targets, str) else list(targets), bias="none")


def add_lora(llm: nn.Module, config: Any):
    """Inject a trainable LoRA adapter into ``llm`` (in place; base weights frozen) and return the
    :class:`peft.PeftModel` around it. ``lora_targets``: "all-linear" or module names such as ``["q_proj"]``."""
    from peft import get_peft_model

    return get_peft_model(llm, lora_config(config))


def add_second_adapter(peft_model: Any, name: str, config: Any, rank: int) -> None:
    """A second trainable LoRA adapter ``name`` beside the first (both stay trainable; switch with
    :func:`activate_adapter`)."""
    peft_model.add_adapter(name, lora_config(config, rank))
    for param_name, p in peft_model.named_parameters():
        if "lora_" in param_name:
            p.requires_grad_(True)


def activate_adapter(peft_model: Any, name: str) -> None:
    """Route every LoRA layer through adapter ``name`` without touching ``requires_grad`` (peft's own
    ``set_adapter`` freezes the other adapters, which would cut a jointly trained one out of the optimiser)."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module._active_adapter = name
