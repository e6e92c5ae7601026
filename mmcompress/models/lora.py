"""LoRA on a causal LM with peft, from any config that carries ``lora_r``, ``lora_alpha``, ``lora_dropout`` and
``lora_targets`` (the soft encoder, GIST's LoRA fine-tuning, the interleaved decoder tuning)."""
from __future__ import annotations

from typing import Any

from torch import nn


def add_lora(llm: nn.Module, config: Any):
    """Inject a trainable LoRA adapter into ``llm`` (in place; base weights frozen) and return the
    :class:`peft.PeftModel` around it. ``lora_targets``: "all-linear" or module names such as ``["q_proj"]``."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    lora = LoraConfig(r=int(config.lora_r), lora_alpha=int(config.lora_alpha), lora_dropout=float(config.lora_dropout),
                      target_modules=targets if isinstance(targets, str) else list(targets), bias="none")
    return get_peft_model(llm, lora)
