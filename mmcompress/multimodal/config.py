"""Settings of the ``interleaved`` compressor (:mod:`.interleaved`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..soft.encoder import EncoderConfig

STYLES = ("icae", "kv", "meanpool")
MODES = ("soft", "full")


@dataclass
class InterleavedConfig(EncoderConfig):
    """Settings of the ``interleaved`` compressor.

    ``num_slots`` (K) soft tokens replace each chunk of at most ``chunk_tokens`` positions of the compressible part
    (text tokens + K_img per image). ``style``: ``icae`` (soft embeddings), ``kv`` (per-layer keys/values of memory
    slots) or ``meanpool`` (no slots: the per-layer keys/values averaged over K contiguous groups of each chunk).
    ``mode``: ``soft`` (compress) or ``full`` (uncompressed reference: every adapter and text token goes to the
    decoder). Image path (text-LLM backbones): ``vision_encoder`` (an encoder spec of the vision family),
    ``adapter`` (``mlp``, ``perceiver``, ``qformer``, ``pool``) with ``image_tokens`` outputs per image and
    ``adapter_kwargs``; ``reduce_image_tokens`` average-pools each image's tokens to fewer (hard visual reduction).
    Nested slots (Matryoshka / MQT-LLaVA style): slots are causal, so the first K of ``num_slots`` do not depend on
    the rest; ``slot_schedule`` (e.g. ``[4, 8, 16]``) trains each step with a K drawn from it, so one model serves
    every K, and ``use_slots`` picks K at inference (``None``: all ``num_slots``).
    LLaVA backbones use their own tower and projector. ``keep_trailing_question``: a final "...?" sentence of the
    prompt stays text when no question segment is given.
    ``train_adapter: false`` freezes the adapter too (a soft stage that starts from an aligned image path: the
    encoder learns to read it as it is). Decoder tuning (:mod:`.decoder_lora`): ``tune_decoder`` (full mode) trains
    LoRA (``lora_r``, ``lora_alpha``, ``lora_targets``) on the LLM along with the image path, LLaVA's second stage;
    ``decoder_lora`` (a folder saved by such a model) merges that adapter into the LLM first, so the decoder of this
    model is the tuned LLM.
    ``question_aware`` (soft mode): the encoder also reads the kept text (the question) after each chunk, before the
    slots, so the K soft tokens can keep what the question asks for (query-guided compression, as LongLLMLingua's
    question-aware ranking on the hard side). The question still goes to the decoder as text; the soft tokens then
    belong to that question and cannot be reused for another.
    """

    num_slots: int = 8
    chunk_tokens: int = 256
    style: str = "icae"
    mode: str = "soft"
    vision_encoder: str = "open_clip:mmc-vit-tiny-p8-64"
    adapter: str = "perceiver"
    image_tokens: int | None = 16
    adapter_kwargs: dict[str, Any] = field(default_factory=dict)
    train_vision_encoder: bool = False
    train_adapter: bool = True
    reduce_image_tokens: int | None = None
    keep_trailing_question: bool = True
    slot_schedule: list[int] | None = None
    use_slots: int | None = None
    max_new_tokens: int = 16
    lora_r: int = 16
    lora_alpha: int = 32
    tune_decoder: bool = False
    decoder_lora: str | None = None
    question_aware: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tune_decoder and self.mode != "full":
            raise ConfigError("tune_decoder applies to mode='full' (the soft mode's decoder is frozen); train it in "
                              "the full-mode reference and give that folder to the soft model as decoder_lora")
        if self.tune_decoder and self.decoder_lora:  # one tuned adapter per chain: a second would be saved alone
            raise ConfigError("tune_decoder and decoder_lora together would stack two decoder adapters; continue the "
                              "tuned full-mode model with init_from instead")
        if self.question_aware and self.mode != "soft":
            raise ConfigError("question_aware applies to mode='soft': in full mode the decoder reads the whole prompt "
                              "and the question anyway")
        if self.question_aware and self.style == "meanpool":
            raise ConfigError("question_aware needs memory slots that read the question after the chunk (style icae "
                              "or kv); style='meanpool' pools the prompt's own positions")
        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.image_tokens is not None and int(self.image_tokens) < 1:
            raise ConfigError(f"image_tokens must be >= 1, got {self.image_tokens}")
        for k in list(self.slot_schedule or []) + ([self.use_slots] if self.use_slots is not None else []):
            if not 1 <= int(k) <= int(self.num_slots):
                raise ConfigError(f"slot counts in slot_schedule / use_slots must be in [1, num_slots={self.num_slots}]"
                                  f", got {k}")
        if self.reduce_image_tokens is not None and int(self.reduce_image_tokens) < 1:
            raise ConfigError(f"reduce_image_tokens must be >= 1 (or null), got {self.reduce_image_tokens}")
