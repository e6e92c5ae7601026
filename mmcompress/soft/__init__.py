"""Soft compression: prompts become a few learned vectors (input embeddings or per-layer keys/values) that a
frozen LLM reads in place of the text.

- :mod:`.base`: :class:`SoftConfig`, :class:`SoftCompressor` (compress -> :class:`SoftPrompt`, batched generate,
  save_pretrained / from_pretrained);
- :mod:`.chunking`: ICAE's multi-span chunks, the chunk batch and the task marker ids;
- :mod:`.encoder`: the shared trainable encoder (base LLM + LoRA + K memory slots);
- :mod:`.icae`: ICAE (slots' last hidden states fed as ``inputs_embeds``);
- :mod:`.kv`: 500xCompressor (slots' per-layer keys/values fed as the decoder's cache);
- :mod:`.meanpool`: mean-pooling (the text's own per-layer keys/values averaged over groups of r tokens);
- :mod:`.xrag`: xRAG (a frozen sentence encoder's embedding projected to one LLM token per document), and
  :mod:`.xrag_task` its ``xrag`` training task;
- :mod:`.losses`: training objectives (autoencoding, continuation, QA) and the sliced loss;
- :mod:`.tasks`: the ``icae`` / ``kv`` training task builders; :mod:`.training` registers every soft task;
- :mod:`.gist`: GIST tokens (gist attention mask, only the gists' keys/values cached); :mod:`.gist_t5` on FLAN-T5;
- :mod:`.autocompressor`: AutoCompressor (summary vectors accumulated over segments).
"""
from ..results import SoftPrompt, SoftSegment
from .base import SoftCompressor, SoftConfig, left_pad, load_private_model, right_pad
from .chunking import Chunks, make_chunks, split_into_chunks
from .encoder import EncoderCompressor, EncoderConfig, SlotModel, SoftEncoder
from .icae import Icae, IcaeConfig, IcaeModel
from .kv import KvCompressor, KvConfig, KvModel
from .meanpool import MeanPoolCompressor, MeanPoolConfig, MeanPoolModel
from . import autocompressor, gist, gist_t5, xrag  # noqa: F401,E402  register their methods
from . import training  # noqa: F401,E402  registers the soft family's training tasks

__all__ = [
    "Chunks", "EncoderCompressor", "EncoderConfig", "Icae", "IcaeConfig", "IcaeModel", "KvCompressor", "KvConfig",
    "KvModel", "MeanPoolCompressor", "MeanPoolConfig", "MeanPoolModel", "SlotModel", "SoftCompressor", "SoftConfig", "SoftEncoder", "SoftPrompt", "SoftSegment", "left_pad",
    "load_private_model", "make_chunks", "right_pad", "split_into_chunks",
]
