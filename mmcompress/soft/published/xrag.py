"""xRAG releases (Hannibal046/xRAG: ``Hannibal046/xrag-7b`` on Mistral-7B-Instruct-v0.2, ``xrag-moe`` on Mixtral).

The release is one Hugging Face folder written by ``XMistralForCausalLM.save_pretrained``
(src/model/xMistral/modeling_xmistral.py; xMixtral alike):

- ``config.json``: ``architectures: ["XMistralForCausalLM"]``, ``model_type: "mistral"``, plus ``projector_type``
  (``"mlp2x_gelu"``) and ``retriever_hidden_size`` (4096, the SFR-Embedding-Mistral width);
- weights (safetensors shards, bfloat16): the Mistral LM (``model.*``, ``lm_head.weight``) and the projector
  ``projector.projector.0.{weight,bias}`` (``Linear(retriever_hidden_size, hidden_size)``), GELU,
  ``projector.projector.2.{weight,bias}`` (``Linear(hidden_size, hidden_size)``);
- a tokenizer with ``<pad>`` and the placeholder ``<xRAG>`` added (src/language_modeling/train.py:470-483; the
  embedding rows of both exist but are never trained: the projected vector is written over ``<xRAG>``'s embedding).

The retriever is not part of the release: xRAG reads Salesforce/SFR-Embedding-Mistral's last-token embedding of a
document truncated to 180 tokens (tutorial.ipynb). It maps onto mmcompress's ``xrag`` with the LM as ``model``, the
retriever as ``encoder`` (``pooling="last"``, no normalisation), one chunk of 180 tokens per document, one soft token
per document, ``slot_token="<xRAG>"`` and xRAG's fine-tuning prompt (no extra answer instruction).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import PublishedFormat, register_format
from .checkpoint import architectures, load_tensors, read_config

ARCHITECTURES = ("XMistralForCausalLM", "XMixtralForCausalLM")
XRAG_TOKEN = "<xRAG>"
DEFAULT_RETRIEVER = "Salesforce/SFR-Embedding-Mistral"
RETRIEVER_MAX_LENGTH = 180  # tutorial.ipynb / run_eval.py retrieval_context_length


def detect(folder: Path) -> bool:
    config = read_config(folder) or {}
    return bool(architectures(folder) & set(ARCHITECTURES)) or ("projector_type" in config
                                                                 and "retriever_hidden_size" in config)


def load(folder: Path, **overrides: Any):
    """An :class:`~mmcompress.soft.xrag.XRAG` reading the release in ``folder``.

    ``retriever=`` (or ``encoder=``) names the retriever (default SFR-Embedding-Mistral); other keyword arguments
    override :class:`~mmcompress.soft.xrag.XRAGConfig` fields (``dtype``, ``encoder_dtype``, ``device``...).
    """
    from ..xrag import XRAG, XRAGConfig

    folder = Path(folder)
    config = read_config(folder)
    if config is None:
        raise ConfigError(f"{folder} has no readable config.json; it is not an xRAG release")
    depth = re.fullmatch(r"mlp(\d+)x_gelu", str(config.get("projector_type", "")))
    if depth is None or int(depth.group(1)) != 2:
        raise ConfigError(f"{folder}: projector_type {config.get('projector_type')!r} is not supported "
                          "(xRAG's released models use mlp2x_gelu)")
    retriever_dim = int(config.get("retriever_hidden_size") or 0)
    if retriever_dim <= 0:
        raise ConfigError(f"{folder}: config.json has no retriever_hidden_size; the release has no projector")
    weights = load_tensors(folder, lambda n: n.startswith("projector.projector."), "xRAG projector (projector.projector.*)")
    expected = {f"projector.projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    if set(weights) != expected:
        raise ConfigError(f"{folder}: projector tensors {sorted(weights)} do not match mlp2x_gelu; "
                          f"missing {sorted(expected - set(weights))}")
    _check_tokenizer(folder)
    hidden = int(config["hidden_size"])
    retriever = overrides.pop("retriever", None)
    fields: dict[str, Any] = dict(
        model=str(folder), encoder=retriever or DEFAULT_RETRIEVER, pooling="last", normalize=False,
        chunk_tokens=RETRIEVER_MAX_LENGTH, max_chunks=1, num_slots=1, projector_hidden=hidden,
        answer_instruction=None, slot_token=XRAG_TOKEN)
    if retriever is not None and "encoder" in overrides:
        raise ConfigError("pass the retriever as retriever= or encoder=, not both")
    fields.update(overrides)
    compressor = XRAG(XRAGConfig.from_dict(fields))
    encoder_dim = compressor.module.encoder.dim
    if encoder_dim != retriever_dim:
        raise ConfigError(f"retriever {fields['encoder']!r} has hidden size {encoder_dim}, but this xRAG projector "
                          f"reads {retriever_dim} (retriever_hidden_size); pass the retriever it was trained with")
    compressor.load_trainable({name.replace("projector.projector.", "projector.net."): w for name, w in weights.items()},
                              source=str(folder))
    return compressor


def _check_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder} has no readable tokenizer ({e}); xRAG releases ship theirs") from None
    if XRAG_TOKEN not in tokenizer.get_vocab():
        raise ConfigError(f"{folder}: the tokenizer has no {XRAG_TOKEN} token; an xRAG release adds it as the "
                          "placeholder of the projected embedding")


FORMAT = register_format(PublishedFormat("xrag", detect, load, "xRAG (XMistralForCausalLM / XMixtralForCausalLM + projector)"))
