"""500xCompressor checkpoints (ZongqianLi/500xCompressor) as mmcompress ``kv`` compressors.

No trained 500xCompressor is public ("uploaded to Huggingface but not open to the public", the README); what loads
here is what its code saves (ZongqianLi/500xCompressor at c85c1d779a55532d625d1dcbf2dc3b640c1919bb):

- ``codes/pretraining/train_500xCompressor.py`` trains ``L3LoraL3`` (an ``nn.Module``: ``llama`` = the base model
  under peft LoRA ``r=64, lora_alpha=32``, default Llama targets ``q_proj``/``v_proj``; ``memory_embeddings`` a
  ``[1, num_mem, 4096]`` bf16 parameter) with the Hugging Face ``Trainer``, which writes a ``checkpoint-N/`` folder
  whose ``model.safetensors`` is the module's whole state dict: ``llama.base_model.model.model.layers.{i}.self_attn.
  {q,v}_proj.lora_{A,B}.default.weight``, ``memory_embeddings`` and the frozen base weights (not read here);
- the inference code (``demo/L3LoraL3.py``, ``codes/prediction/L3LoraL3.py``) reads a ``lora_path`` file with
  ``torch.load``: a dict holding the LoRA entries and ``memory_embeddings`` under the same names.

Both load, by folder (``create_compressor(folder)``) or file (``create_compressor("kv", checkpoint=...)``). How the
official code compresses and decodes, and the ``kv`` options that reproduce it:

- the text (no BOS, truncated to ``max_length``) is right-padded with EOS to ``context_len`` = 500 tokens that the
  encoder attends to, and the memory tokens follow at positions 500.. (``pad_to=500``, ``pad_id`` = EOS,
  ``slot_positions="after_text"``); longer texts are chunked here instead of truncated;
- the decoder is the base model with the adapter off, reading the memory tokens' keys/values as its cache and
  continuing at position ``num_mem``: regeneration starts from ``[BOS]``, QA from ``"Question: {q} Answer: "``
  (``marker_ids={"ae": [bos]}``, ``qa_template``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import PublishedFormat, register_format
from .checkpoint import _tensor_names
from .peft_keys import check_width, map_lora

BASE_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
MEMORY_KEY = "memory_embeddings"
LORA_PREFIX = "llama."
LORA_ALPHA = 32
CONTEXT_LEN = 500  # encoder input padded to this length (train_500xCompressor.py max_length; predict_*: context_len)
TRAINER_FILES = ("model.safetensors", "pytorch_model.bin")


def detect(folder: Path) -> bool:
    file = Path(folder) / TRAINER_FILES[0]
    if not file.is_file():
        return False
    try:
        names = _tensor_names(file)
    except Exception:  # not a readable safetensors header: not this format
        return False
    return MEMORY_KEY in names and any(n.startswith(LORA_PREFIX) and ".lora_A." in n for n in names)


def read_needed(file: Path) -> dict[str, Any]:
    """``memory_embeddings`` and the LoRA tensors only (a Trainer checkpoint also holds the whole base model)."""
    def wanted(name: str) -> bool:
        return name == MEMORY_KEY or (name.startswith(LORA_PREFIX) and ".lora_" in name)

    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as f:
                return {n: f.get_tensor(n) for n in f.keys() if wanted(n)}
        import torch

        state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a damaged or truncated file
        raise ConfigError(f"{file} is not a readable weights file ({e})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{file} holds a {type(state).__name__}, not a state dict of LoRA tensors")
    return {n: t for n, t in state.items() if wanted(n)}


def find_file(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for name in TRAINER_FILES:
        if (path / name).is_file():
            return path / name
    raise ConfigError(f"500xCompressor checkpoint not found: {path} has none of {', '.join(TRAINER_FILES)} "
                      "(pass the Trainer's checkpoint-N folder or the lora file)")


def load(path: str | Path, *, model: Any = BASE_MODEL, tokenizer: Any = None, lora_alpha: int = LORA_ALPHA,
         context_len: int = CONTEXT_LEN, max_length: int | None = None, **overrides: Any):
    """A ``kv`` compressor from a 500xCompressor checkpoint on the base ``model``. ``context_len``: the padded
    encoder input (500); ``max_length``: text tokens per chunk (default ``context_len``)."""
    import torch

    from ..kv import KvCompressor, KvConfig

    file = find_file(Path(path))
    weights = read_needed(file)
    if MEMORY_KEY not in weights:
        raise ConfigError(f"{file} has no {MEMORY_KEY!r} (the compressed tokens' embeddings [1, num_mem, hidden]); "
                          "it is not a 500xCompressor checkpoint")
    lora, rank, targets = map_lora(weights, LORA_PREFIX, str(file))
    memory = weights[MEMORY_KEY].reshape(-1, weights[MEMORY_KEY].shape[-1])
    fields = {"num_slots": int(memory.shape[0]), "chunk_tokens": int(max_length or context_len),
              "pad_to": int(context_len), "slot_positions": "after_text", "lora_r": rank,
              "lora_alpha": int(lora_alpha), "lora_dropout": 0.0, "lora_targets": targets,
              "qa_template": "Question: {question} Answer: ", **overrides}
    model_obj = None if isinstance(model, str) else model
    if model_obj is None:
        fields["model"] = model
    compressor = KvCompressor(KvConfig.from_dict(fields), model=model_obj, tokenizer=tokenizer)
    check_width(compressor, int(memory.shape[1]), MEMORY_KEY, str(file))
    if "marker_ids" not in overrides:  # regeneration starts from BOS, QA from the question alone
        compressor.config.marker_ids = {"ae": [compressor.tokenizer.bos_token_id], "lm": [], "qa": []}
    # the learned markers are unused (marker_ids), but load_trainable wants every trainable tensor
    markers = torch.zeros_like(compressor.module.markers)
    compressor.load_trainable({**lora, "encoder.slots": memory, "markers": markers}, source=str(file))
    return compressor


FORMAT = register_format(PublishedFormat(
    "500xcompressor", detect, load,
    "500xCompressor (ZongqianLi/500xCompressor): the Trainer's checkpoint (model.safetensors with LoRA + "
    "memory_embeddings) or the lora file its inference code reads, on Llama-3-8B-Instruct"))
