"""LoRA tensors of a released state dict (saved from a ``peft`` model inside the release's own module) mapped onto
the LoRA of mmcompress's soft encoder, with the rank and the target modules read from the tensors themselves."""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError

ENCODER_PEFT = "encoder.peft."  # where the soft encoder's PeftModel sits in IcaeModel / KvModel


def map_lora(weights: dict[str, Any], prefix: str, source: str) -> tuple[dict[str, Any], int, list[str]]:
    """``(tensors renamed for the soft encoder, rank, target module names)`` of the ``lora_A`` / ``lora_B`` tensors
    under ``prefix`` (``"icae."`` for ``icae.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``).
    Only the ``default`` adapter is read; a :class:`ConfigError` names what is missing."""
    lora = {k: v for k, v in weights.items() if k.startswith(prefix) and (".lora_A." in k or ".lora_B." in k)}
    if not lora:
        raise ConfigError(f"{source} has no LoRA tensors under {prefix!r} (names like "
                          f"'{prefix}base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'); "
                          "is it the right checkpoint?")
    adapters = {k.split(".lora_")[1].split(".")[1] for k in lora}
    if adapters != {"default"}:
        raise ConfigError(f"{source}: expected one LoRA adapter named 'default', found {sorted(adapters)}")
    ranks = {int(v.shape[0]) for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ConfigError(f"{source}: LoRA layers of different ranks {sorted(ranks)} are not supported")
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in lora})
    unpaired = sorted({k.split(".lora_")[0] for k in lora if k.replace(".lora_A.", ".lora_B.") not in lora
                       and k.replace(".lora_B.", ".lora_A.") not in lora})
    if unpaired:
        raise ConfigError(f"{source}: LoRA layers without their A/B pair: {unpaired[:3]}")
    renamed = {ENCODER_PEFT + k[len(prefix):]: v for k, v in lora.items()}
    return renamed, ranks.pop(), targets


def check_width(compressor: Any, width: int, what: str, source: str) -> None:
    """A clear error when the release's embeddings do not fit the base model it is loaded on."""
    hidden = int(compressor.llm.get_input_embeddings().weight.shape[1])
    if hidden != width:
        raise ConfigError(f"{source}: {what} has width {width}, but the base model {compressor.config.model!r} has "
                          f"hidden size {hidden}; pass model= the base model the checkpoint was trained on")
