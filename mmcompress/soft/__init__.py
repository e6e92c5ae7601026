"""Soft compression: prompts become a few learned vectors (input embeddings or per-layer keys/values) that a
frozen LLM reads in place of the text.

- :mod:`.base`: :class:`SoftConfig`, :class:`SoftCompressor` (compress -> :class:`SoftPrompt`, batched generate,
  save_pretrained / from_pretrained);
- :mod:`.encoder`: the shared trainable encoder (base LLM + LoRA + K memory slots, multi-span chunking);
- :mod:`.icae`: ICAE (slots' last hidden states fed as ``inputs_embeds``);
- :mod:`.kv`: 500xCompressor (slots' per-layer keys/values fed as the decoder's cache);
- :mod:`.meanpool`: mean-pooling (the text's own per-layer keys/values averaged over groups of r tokens);
- :mod:`.xrag`: xRAG (a frozen sentence encoder's embedding projected to one LLM token per document), and
  :mod:`.xrag_task` its ``xrag`` training task;
- :mod:`.losses`: training objectives (autoencoding, continuation, QA) and the sliced loss;
- :mod:`.tasks`: the ``icae`` / ``kv`` training tasks behind ``mmcompress train``;
- :mod:`.gist`: GIST tokens (gist attention mask, only the gists' keys/values cached);
- :mod:`.autocompressor`: AutoCompressor (summary vectors accumulated over segments).
"""
from ..results import SoftPrompt, SoftSegment
from . import tasks  # noqa: F401  registers the icae / kv training tasks
from .base import SoftCompressor, SoftConfig, left_pad, load_private_model, right_pad
from .encoder import Chunks, EncoderCompressor, EncoderConfig, SlotModel, SoftEncoder, make_chunks, split_into_chunks
from .icae import Icae, IcaeConfig, IcaeModel
from .kv import KvCompressor, KvConfig, KvModel
from .meanpool import MeanPoolCompressor, MeanPoolConfig, MeanPoolModel
from . import autocompressor, gist, xrag, xrag_task  # noqa: F401,E402  register their methods and tasks

__all__ = [
    "Chunks", "EncoderCompressor", "EncoderConfig", "Icae", "IcaeConfig", "IcaeModel", "KvCompressor", "KvConfig",
    "KvModel", "MeanPoolCompressor", "MeanPoolConfig", "MeanPoolModel", "SlotModel", "SoftCompressor", "SoftConfig", "SoftEncoder", "SoftPrompt", "SoftSegment", "left_pad",
    "load_private_model", "make_chunks", "right_pad", "split_into_chunks",
]
