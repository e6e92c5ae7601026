"""A tuned decoder for interleaved prompts: LoRA on the LLM (LLaVA's second stage), saved as a standard peft adapter.

With ``tune_decoder`` the full-mode reference trains LoRA on its LLM together with the image path: a small frozen
LLM (SmolLM2-135M) reads each image well once the image path is aligned, but cannot tell "the second image" from
the others until its own weights are tuned (benchmarks/interleaved_probe.py measures both). The adapter is written
in peft's own format (``decoder_lora/``: ``adapter_config.json`` + ``adapter_model.safetensors``), so any peft user
can load it on the base model.

A later stage reads it with ``decoder_lora``: the adapter is merged into the base weights before anything else is
built, so the soft model's frozen decoder *is* the tuned LLM, and its encoder (a new LoRA on top) starts from it.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import ConfigError

DECODER_LORA_DIR = "decoder_lora"  # the decoder adapter a full-mode model trained (exported for the next stage)
INHERITED_LORA_DIR = "inherited_decoder_lora"  # the adapter merged into this model's decoder (copied for load)
ADAPTER_CONFIG = "adapter_config.json"


def find_decoder_lora(source: str | Path) -> Path:
    """The adapter folder in ``source``: a saved interleaved model (holding ``decoder_lora/`` or
    ``inherited_decoder_lora/``) or a peft adapter folder itself."""
    source = Path(source)
    for folder in (source, source / DECODER_LORA_DIR, source / INHERITED_LORA_DIR):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    raise ConfigError(f"no decoder LoRA at {source}: give a folder saved by an interleaved model trained with "
                      f"tune_decoder: true (it holds {DECODER_LORA_DIR}/), or a peft adapter folder")


def merge_decoder_lora(llm: nn.Module, source: str | Path) -> nn.Module:
    """Load the adapter in ``source`` onto ``llm`` and merge it into the base weights; returns the plain model.

    ``llm`` must be a private copy: its weights change."""
    from peft import PeftModel

    folder = find_decoder_lora(source)
    try:
        tuned = PeftModel.from_pretrained(llm, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as e:  # another base model: shapes or module names differ
        raise ConfigError(f"the decoder LoRA at {folder} does not fit this model ({e.__class__.__name__}: "
                          f"{str(e)[:200]})") from None
    return tuned.merge_and_unload()
