"""Soft compression: prompts become a few learned vectors (input embeddings or per-layer keys/values) that a
frozen LLM reads in place of the text.

- :mod:`.base`: :class:`SoftConfig`, :class:`SoftCompressor` (compress -> :class:`SoftPrompt`, batched generate,
  save_pretrained / from_pretrained);
- :mod:`.encoder`: the shared trainable encoder (base LLM + LoRA + K memory slots, multi-span chunking);
- :mod:`.icae`: ICAE (slots' last hidden states fed as ``inputs_embeds``);
- :mod:`.kv`: 500xCompressor (slots' per-layer keys/values fed as the decoder's cache);
- :mod:`.xrag`: xRAG (a frozen sentence encoder's embedding projected to one LLM token per document), and
  :mod:`.xrag_task` its ``xrag`` training task;
- :mod:`.losses`: training objectives (autoencoding, continuation, QA) and the sliced loss;
- :mod:`.tasks`: the ``icae`` / ``kv`` training tasks behind ``mmcompress train``.
"""
import importlib as _importlib

from ..results import SoftPrompt, SoftSegment
from .base import SoftCompressor, SoftConfig, left_pad, load_private_model, right_pad

__all__ = ["SoftCompressor", "SoftConfig", "SoftPrompt", "SoftSegment", "left_pad", "load_private_model", "right_pad"]

# method modules register themselves; they are optional while the family is being built
for _name in ("encoder", "icae", "kv", "losses", "tasks", "xrag", "xrag_task", "gist", "autocompressor"):
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a module does not exist yet
        if _e.name != f"{__name__}.{_name}":
            raise
