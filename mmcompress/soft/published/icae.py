"""ICAE v2 releases (getao/icae, weights at hf.co/sggetao/icae) as mmcompress ``icae`` compressors.

The release (``code/icae_v2/modeling_icae_multi_span.py`` at getao/icae 469a46886a92dd5e76b2d12a8bac0fb7ed7d4cdd):

- one safetensors file per model, ``mistral_7b_pretrained_icae.safetensors`` and ``mistral_7b_ft_icae.safetensors``,
  bf16, holding what ``ICAE.load_state_dict(..., strict=False)`` needs ("only load lora and memory token
  embeddings", ``pretrained_inference.py:32``): ``icae.base_model.model.model.layers.{i}.self_attn.{q,v}_proj.
  lora_{A,B}.default.weight`` (peft's default Mistral targets, r=512, lora_alpha=32 from the inference script) and
  ``memory_token_embed.weight`` ``[mem_size + 3, 4096]``: ``mem_size`` (128) memory slots, then the [AE], [LM] and
  [FT] tokens (``ae_token_id = vocab_size_with_mem + 0`` ..., lines 118-133);
- the base model is ``mistralai/Mistral-7B-Instruct-v0.2`` (not in the file);
- the encoder reads the text tokenized *with* its BOS, cut into ``ceil(T / (mem_size * 4))`` segments of
  ``ceil(T / n)`` tokens (``mean_compression_rate`` 4, so 512-token chunks), each followed by the memory slots; the
  slots' last hidden states (``hidden_states[-1]``) are the compressed context (``_compress``, lines 228-258);
- the decoder is the base model with the adapter off: pretrained, ``[slots] [AE]`` then the text; fine-tuned,
  ``<s> [INST] [slots] [FT] prompt [/INST]`` (ids ``1, 733, 16289, 28793`` and ``733, 28748, 16289, 28793`` of the
  Mistral tokenizer, ``fine_tuned_inference.py:54-56``).

All of it maps onto mmcompress's ``icae`` (slots -> ``encoder.slots``, the three rows -> ``markers``, LoRA ->
``encoder.peft``), with the config options that make it read input as the official code does: ``encoder_bos``,
``chunk_tokens = 4 * mem_size``, ``max_input_tokens=5120``, ``qa_template="{question}"`` and, for the fine-tuned
model, ``decoder_prefix_ids`` / ``decoder_suffix_ids`` (``<s>[INST]`` / ``[/INST]`` from the base tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import PublishedFormat, register_format
from .checkpoint import _read, _tensor_names
from .peft_keys import check_width, map_lora

BASE_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
MEMORY_KEY = "memory_token_embed.weight"
LORA_ALPHA = 32  # pretrained_inference.py:20 (not stored in the file)
MEAN_COMPRESSION_RATE = 4  # pretrained_inference_script.sh
MAX_LENGTH = 5120  # the inference scripts truncate there; mmcompress refuses longer input instead
TEMPLATES = ("pretrained", "mistral-inst")


def is_icae_file(file: Path) -> bool:
    try:
        return file.suffix == ".safetensors" and MEMORY_KEY in _tensor_names(file)
    except Exception:  # not a readable safetensors header: not this format
        return False


def detect(folder: Path) -> bool:
    return Path(folder).is_dir() and any(is_icae_file(f) for f in sorted(Path(folder).glob("*.safetensors")))


def find_file(path: Path) -> Path:
    """The checkpoint file: ``path`` itself, or the one ICAE file of a folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise ConfigError(f"ICAE checkpoint not found: {path}")
    files = [f for f in sorted(path.glob("*.safetensors")) if is_icae_file(f)]
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise ConfigError(f"{path} must hold exactly one ICAE checkpoint (*.safetensors with {MEMORY_KEY}); found "
                          f"{found}: pass create_compressor('icae', checkpoint=<file>)")
    return files[0]


def guess_template(file: Path) -> str:
    """The release names its fine-tuned model ``..._ft_icae.safetensors``: that one reads Mistral's [INST] format."""
    return "mistral-inst" if "_ft_" in f"_{file.stem}_" else "pretrained"


def load(path: str | Path, *, model: Any = BASE_MODEL, tokenizer: Any = None, template: str | None = None,
         lora_alpha: int = LORA_ALPHA, mean_compression_rate: int = MEAN_COMPRESSION_RATE, **overrides: Any):
    """An ``icae`` compressor from an ICAE v2 checkpoint file (or a folder holding one) on the base ``model``."""
    from ..icae import Icae, IcaeConfig

    file = find_file(Path(path))
    template = template or guess_template(file)
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}")
    weights = _read(file)
    if MEMORY_KEY not in weights:
        raise ConfigError(f"{file} has no {MEMORY_KEY!r} (memory slots + [AE]/[LM]/[FT]); it is not an ICAE v2 "
                          "checkpoint")
    lora, rank, targets = map_lora(weights, "icae.", str(file))
    memory = weights[MEMORY_KEY]
    mem_size = int(memory.shape[0]) - 3
    if mem_size < 1:
        raise ConfigError(f"{file}: {MEMORY_KEY} has {memory.shape[0]} rows; expected mem_size + 3")
    fields = {"num_slots": mem_size, "chunk_tokens": mem_size * int(mean_compression_rate), "lora_r": rank,
              "lora_alpha": int(lora_alpha), "lora_dropout": 0.0, "lora_targets": targets, "encoder_bos": True,
              "max_input_tokens": MAX_LENGTH, "qa_template": "{question}", **overrides}
    model_obj = None if isinstance(model, str) else model
    if model_obj is None:
        fields["model"] = model
    compressor = Icae(IcaeConfig.from_dict(fields), model=model_obj, tokenizer=tokenizer)
    check_width(compressor, int(memory.shape[1]), MEMORY_KEY, str(file))
    if template == "mistral-inst":
        tok = compressor.tokenizer
        if "decoder_prefix_ids" not in overrides:
            compressor.config.decoder_prefix_ids = [tok.bos_token_id, *tok.encode("[INST]", add_special_tokens=False)]
        if "decoder_suffix_ids" not in overrides:
            compressor.config.decoder_suffix_ids = tok.encode("[/INST]", add_special_tokens=False)
    slots = {"encoder.slots": memory[:mem_size], "markers": memory[mem_size:]}
    compressor.load_trainable({**lora, **slots}, source=str(file))
    return compressor


FORMAT = register_format(PublishedFormat(
    "icae", detect, load, "ICAE v2 (getao/icae): one safetensors file with LoRA + memory_token_embed, on Mistral-7B"))
