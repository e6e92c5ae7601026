"""AutoCompressor releases (princeton-nlp/AutoCompressors: ``princeton-nlp/AutoCompressor-Llama-2-7b-6k``,
``AutoCompressor-2.7b-6k`` / ``-2.7b-30k`` / ``-1.3b-30k`` on OPT, and the ``RMT-*`` baselines).

A release is the whole fine-tuned model saved by ``LlamaAutoCompressorModel`` / ``OPTAutoCompressorModel``
(auto_compressor.py) with ``save_pretrained``:

- ``config.json``: the base config (``model_type`` "llama" or "opt", ``architectures``
  ``["LlamaAutoCompressorModel"]`` / ``["OPTAutoCompressorModel"]``) plus ``summary_length`` (50),
  ``accumulate_summary`` (true; false for RMT) and ``segment_gradient_checkpointing`` (train.py:158-160);
- weights (``pytorch_model*.bin``, float32 / bfloat16): the causal LM's own keys plus ``embed_summary.weight``
  ``[summary_length, hidden]``, the summary-token embeddings (initialised to the EOS row, then trained);
- the base model's tokenizer, unchanged (summary tokens have no vocabulary ids).

It maps onto mmcompress's ``autocompressor`` with the release as ``model`` (frozen: ``finetune="frozen"``),
``embed_summary`` as the summary embeddings, ``num_slots = summary_length``, ``accumulate = accumulate_summary`` and
the reference's positions (``summary_positions="auto"``: numbered with the text for Llama, none for OPT). Documents
are cut into segments of ``chunk_tokens`` (default 1536: the released models were trained on 6144 tokens in 4
segments or 30720 in 20; the official API takes ``segment_lengths`` from the caller).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import PublishedFormat, register_format
from .checkpoint import architectures, load_tensors, read_config

ARCHITECTURES = ("LlamaAutoCompressorModel", "OPTAutoCompressorModel", "AutoCompressorModel")
SEGMENT_TOKENS = 1536


def detect(folder: Path) -> bool:
    config = read_config(folder) or {}
    return bool(architectures(folder) & set(ARCHITECTURES)) or ("summary_length" in config
                                                                 and "accumulate_summary" in config)


def load(folder: Path, **overrides: Any):
    """An :class:`~mmcompress.soft.autocompressor.AutoCompressor` reading the release in ``folder``; keyword
    arguments override :class:`~mmcompress.soft.autocompressor.AutoCompressorConfig` fields (``chunk_tokens``,
    ``dtype``, ``device``...)."""
    from ..autocompressor import AutoCompressor, AutoCompressorConfig

    folder = Path(folder)
    config = read_config(folder)
    if config is None:
        raise ConfigError(f"{folder} has no readable config.json; it is not an AutoCompressor release")
    summary_length = int(config.get("summary_length") or 0)
    if summary_length <= 0:
        raise ConfigError(f"{folder}: summary_length is {config.get('summary_length')!r}; a model without summary "
                          "tokens (e.g. a FullAttention baseline) is not an AutoCompressor")
    if config.get("model_type") not in ("llama", "opt"):
        raise ConfigError(f"{folder}: model_type {config.get('model_type')!r}; AutoCompressor releases are llama or opt")
    weights = load_tensors(folder, lambda n: n == "embed_summary.weight", "summary embeddings (embed_summary.weight)")
    table = weights["embed_summary.weight"]
    width = int(config.get("word_embed_proj_dim") or config["hidden_size"])
    if tuple(table.shape) != (summary_length, width):
        raise ConfigError(f"{folder}: embed_summary.weight has shape {tuple(table.shape)}, expected "
                          f"({summary_length}, {width}) from summary_length and the embedding width")
    fields: dict[str, Any] = dict(model=str(folder), num_slots=summary_length, chunk_tokens=SEGMENT_TOKENS,
                                  accumulate=bool(config.get("accumulate_summary", False)), finetune="frozen",
                                  summary_positions="auto", randomize_segments=False)
    fields.update(overrides)
    compressor = AutoCompressor(AutoCompressorConfig.from_dict(fields))
    compressor.load_trainable({"summary_embeddings": table.float()}, source=str(folder))
    return compressor


FORMAT = register_format(PublishedFormat("autocompressor", detect, load,
                                         "AutoCompressor (Llama / OPT AutoCompressorModel, embed_summary)"))
