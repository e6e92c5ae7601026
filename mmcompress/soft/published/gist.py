"""GIST releases (jayelm/gisting: ``jayelm/llama-7b-gist-1`` and its controls; ``jayelm/flan-t5-xxl-gist-1``).

The LLaMA release is written by ``GistLlamaForCausalLM.save_pretrained`` (src/gist_llama.py) after
src/train.py:186-199 added ``<GIST>`` as an additional special token (id 32000) and grew ``embed_tokens`` and
``lm_head`` by one row (set to the vocabulary mean, then fine-tuned with every other weight):

- ``config.json``: ``architectures: ["GistLlamaForCausalLM"]``, ``model_type: "llama"``, ``vocab_size: 32001``;
- ``pytorch_model*.bin`` (float32): the LLaMA keys (``model.*``, ``lm_head.weight``); on the hub these are a **weight
  diff** (src/weight_diff.py ``make_diff``: tuned minus LLaMA-7B, whose missing ``<GIST>`` row counts as zero), so
  ``base=`` must name the original LLaMA-7B folder (``recover``: diff + base), or a folder already recovered;
- the LLaMA tokenizer plus ``<GIST>``.

It maps onto mmcompress's ``gist`` with the model frozen (``finetune="frozen"``), the ``<GIST>`` row as the (tied)
gist embedding, one gist token, the compressed text preceded by BOS as the reference's ``tokenizer.encode`` does
(``chunk_bos``), and the reference's mask (tokens after the gists see none of the text before them). The reference's
prompt is ``Instruction: {instruction}\\n<GIST>\\nInput: {input}\\nOutput:``; :func:`gist_prompt` lays a prompt out that
way (the instruction compressed, the rest kept).

The FLAN-T5 releases (``jayelm/flan-t5-xxl-gist-1``) are ``GistT5ForConditionalGeneration.save_pretrained``: the full
weights (``model_type: "t5"``, ``shared`` and ``lm_head`` grown by the ``<GIST>`` row, id 32100) and FLAN-T5's
tokenizer with ``<GIST>`` as its additional special token (src/train.py:175-199). They map onto
:class:`~mmcompress.soft.gist_t5.GistT5Compressor` (``gist_t5``): the instruction's gists become the encoder's cached
keys/values and states, read back before the input as src/gist_t5.py does. T5's prompt has no ``Output:`` line:
``gist_prompt(instruction, input, suffix="")``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import PublishedFormat, register_format
from .checkpoint import _read, architectures, read_config, weight_files

GIST_TOKEN = "<GIST>"
LLAMA, T5 = "GistLlamaForCausalLM", "GistT5ForConditionalGeneration"


def detect(folder: Path) -> bool:
    return bool(architectures(folder) & {LLAMA, T5})


def gist_prompt(instruction: str, input_text: str = "", suffix: str = "\nOutput:"):
    """The reference's Alpaca+ layout (src/compress.py:129-169): the instruction is gisted, the input kept.
    ``suffix``: what ends the prompt (LLaMA ``"\nOutput:"``; FLAN-T5 nothing, ``suffix=""``)."""
    from ...prompt import Prompt, Role, TextSegment

    tail = (f"\nInput: {input_text}" if input_text else "") + suffix
    segments = [TextSegment(f"Instruction: {instruction}\n", role=Role.CONTEXT)]
    if tail:
        segments.append(TextSegment(tail, role=Role.QUESTION, sep=""))
    return Prompt(tuple(segments))


def load(folder: Path, base: str | None = None, **overrides: Any):
    """A :class:`~mmcompress.soft.gist.GistCompressor` reading the release in ``folder``; ``base`` is the original
    LLaMA folder when ``folder`` holds a weight diff. Other keyword arguments override
    :class:`~mmcompress.soft.gist.GistConfig` fields (``num_slots``, ``dtype``, ``device``...)."""

    from ..gist import GistCompressor, GistConfig

    folder = Path(folder)
    config = read_config(folder) or {}
    tokenizer = _gist_tokenizer(folder)
    gist_id = tokenizer.convert_tokens_to_ids(GIST_TOKEN)
    if gist_id >= int(config.get("vocab_size", 0)):
        raise ConfigError(f"{folder}: <GIST> is token {gist_id} but the model has {config.get('vocab_size')} rows")
    if T5 in architectures(folder):
        return _load_t5(folder, tokenizer, base, overrides)
    fields: dict[str, Any] = dict(model=str(folder), num_slots=1, finetune="frozen", tied_gists=True, chunk_bos=True,
                                  chunk_tokens=int(config.get("max_position_embeddings", 2048)) // 2)
    fields.update(overrides)
    gist_config = GistConfig.from_dict(fields)
    if base is not None:
        llm = _recover(folder, Path(base), gist_config)
        compressor = GistCompressor(gist_config, model=llm, tokenizer=tokenizer)
    else:
        compressor = GistCompressor(gist_config)
        if _looks_like_a_diff(compressor.llm):
            raise ConfigError(f"{folder} looks like a weight diff (its final norm weights are near 0): pass "
                              "base=<original LLaMA-7B folder> to recover the model, as gisting's weight_diff.py does")
    row = compressor.llm.get_input_embeddings().weight[gist_id].detach().float()
    compressor.load_trainable({"gist_embeddings": row[None].cpu()}, source=str(folder))
    return compressor


def _load_t5(folder: Path, tokenizer: Any, base: str | None, overrides: dict[str, Any]):
    """A FLAN-T5 gist release (full weights) as a ``gist_t5`` compressor."""
    from ..gist_t5 import GistT5Compressor, GistT5Config

    if base is not None:
        raise ConfigError(f"{folder} is a FLAN-T5 gist model, released as full weights: it takes no base=")
    model_type = (read_config(folder) or {}).get("model_type")
    if model_type != "t5":
        raise ConfigError(f"{folder} names GistT5ForConditionalGeneration but its config is model_type "
                          f"{model_type!r}, not 't5'")
    compressor = GistT5Compressor(GistT5Config.from_dict({"model": str(folder), "num_slots": 1, **overrides}),
                                  tokenizer=tokenizer)
    compressor.module  # noqa: B018  (load now: a damaged folder is refused here, not at the first prompt)
    return compressor


def _gist_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder} has no readable tokenizer ({e}); gist releases ship theirs with <GIST>") from None
    if GIST_TOKEN not in tokenizer.get_vocab():
        raise ConfigError(f"{folder}: the tokenizer has no {GIST_TOKEN} token; a gist release adds it")
    return tokenizer


def _looks_like_a_diff(llm: Any) -> bool:
    norm = llm.get_decoder().norm.weight
    return float(norm.detach().float().abs().mean()) < 0.1


def _recover(folder: Path, base: Path, config: Any):
    """The tuned model = diff + base, tensor by tensor (weight_diff.py ``recover``), read one base file at a time."""
    import torch

    from ...models.loading import pick_device, pick_dtype
    from ..base import load_private_model

    if not (base / "config.json").is_file():
        raise ConfigError(f"base {base} is not a model folder (no config.json); pass the original LLaMA weights")
    llm, _ = load_private_model(str(folder), config.device, "float32", config.model_kwargs)
    params = llm.state_dict()
    base_files = weight_files(base)
    missing = sorted(n for n in params if n not in base_files)
    if missing:
        raise ConfigError(f"base {base} lacks {len(missing)} tensors of the diff (e.g. {missing[:3]}); is it LLaMA?")
    with torch.no_grad():
        for file in sorted(set(base_files.values())):
            for name, raw in _read(file).items():
                if name not in params:
                    continue  # e.g. rotary inv_freq buffers of old checkpoints
                target = params[name]
                if raw.shape[1:] != target.shape[1:] or raw.shape[0] > target.shape[0]:
                    raise ConfigError(f"base tensor {name} {tuple(raw.shape)} does not fit the diff's {tuple(target.shape)}")
                # rows the base lacks (the <GIST> row) were diffed against zero
                target[: raw.shape[0]].add_(raw.to(target.device, target.dtype))
    device = pick_device(config.device)
    return llm.to(pick_dtype(config.dtype, device))


FORMAT = register_format(PublishedFormat("gist", detect, load, "GIST (GistLlamaForCausalLM, full weights or weight diff; GistT5ForConditionalGeneration)"))
