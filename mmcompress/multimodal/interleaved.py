"""``interleaved``: an image-text prompt compressed into one shared set of soft tokens.

The compressible part of the prompt (images and text, in order; see :func:`~.embedding.split_layout`) is embedded
as one sequence: text token embeddings and, at each ``<image>``, the image's adapter output (K_img tokens). The soft
encoder of the soft family (base LLM + LoRA + K memory slots, :class:`~mmcompress.soft.encoder.SoftEncoder`) reads
that sequence and emits K soft tokens, as ICAE hidden states (``style="icae"``) or as 500xCompressor per-layer
keys/values (``style="kv"``). Long sequences are cut into chunks of at most ``chunk_tokens`` positions whose borders
never split an image (:mod:`.chunking`), K slots per chunk. The decoder, the frozen LLM, reads
``kept prefix + soft tokens + marker + kept text (the question)`` through the same ``generate()`` as text soft prompts.
With ``question_aware`` the encoder reads the question too (after each chunk, before the slots), so the soft tokens
keep what that question needs.

``mode="full"`` is the uncompressed reference (LLaVA style): the decoder reads every adapter token and text token of
the compressible part directly; the image path trains (the adapter, and the tower with ``train_vision_encoder``),
and with ``tune_decoder`` a LoRA adapter on the LLM (LLaVA's second stage, :mod:`.decoder_lora`), which a soft model
then takes as its frozen decoder (``decoder_lora``). Both modes train with the shared trainer (task
``interleaved``, :mod:`.training`).

Backbones: a text LLM (SmolLM2 by default) with an image encoder + adapter from the vision family
(``vision_encoder``, ``adapter``, ``image_tokens``), or an HF LLaVA model (``model`` = its folder or id), whose own
tower and projector embed the images and whose language model is the encoder (LoRA) and the decoder.

    from mmcompress import create_compressor
    comp = create_compressor("interleaved", num_slots=8)              # untrained: train it first (README)
    soft = comp.compress("Photo A: <image> Photo B: <image> Which one shows a cat?", images=["a.png", "b.png"])
    comp.generate(soft)                                                # -> ["the second"]
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compressor import Timings
from ..errors import ConfigError, InvalidPromptError
from ..prompt import Prompt, TextSegment
from ..registry import register_compressor
from ..results import SoftPrompt, SoftSegment
from ..soft.base import SoftCompressor, _reject_budget, right_pad
from ..soft.chunking import TASK_IDS, Chunks
from ..soft.encoder import EncoderConfig, SlotModel
from ..soft.icae import IcaeModel
from ..soft.kv import KvCompressor, KvModel, spans_kv
from ..soft.losses import IGNORE, sliced_lm_loss
from .chunking import pack_blocks
from .embedding import TEXT, InterleavedEmbedder, Layout, SequencePlan, scatter_image_tokens, split_layout
from .vision_path import LlavaPath, build_encoder_adapter, is_llava

IMAGE_PATH_FILE = "image_path.safetensors"
STYLES = ("icae", "kv")
MODES = ("soft", "full")
LLAVA_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class InterleavedConfig(EncoderConfig):
    """Settings of the ``interleaved`` compressor.

    ``num_slots`` (K) soft tokens replace each chunk of at most ``chunk_tokens`` positions of the compressible part
    (text tokens + K_img per image). ``style``: ``icae`` (soft embeddings) or ``kv`` (per-layer keys/values).
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


# ------------------------------------------------------------------------------------------------ batches
@dataclass
class EncodedItem:
    """One example for the trainable model: the plan of its compressible part, the decoder tail and its labels, and
    (question-aware encoders) the question tokens the encoder reads after each chunk."""

    plan: SequencePlan
    tail: list[int]
    labels: list[int]
    task: str
    query: list[int] = field(default_factory=list)


def collate_items(items: Sequence[EncodedItem], image_path: Any, chunk_tokens: int, pad_id: int,
                  full: bool = False) -> dict[str, torch.Tensor]:
    """Batch examples: every chunk of every compressible part left-padded in one ``[N, L]`` batch (image positions
    marked by their batch-wide image number), the images preprocessed into one pixel batch, tails right-padded.

    With ``full`` the compressible part is one row per example (no chunking: the decoder reads it as is). An item's
    ``query`` tokens are appended to every one of its chunks (they count against no chunk's ``chunk_tokens``).
    """
    rows, spans, index, images = [], [], [], []
    image_base = 0
    for b, item in enumerate(items):
        plan = item.plan
        if full:
            chunks = [(0, len(plan))]
        else:
            chunks = pack_blocks(_block_lengths(plan.image_index), chunk_tokens) or [(0, 0)]
        for c, (s, e) in enumerate(chunks):
            ids = plan.input_ids[s:e] + item.query
            img = [i + image_base if i >= 0 else i for i in plan.image_index[s:e]] + [TEXT] * len(item.query)
            rows.append((ids, img))
            spans.append(b)
            index.append(c)
        image_base += len(plan.images)
        images.extend(plan.images)
    width = max(1, max(len(r[0]) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    image_index = torch.full((len(rows), width), -2, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for n, (r, img) in enumerate(rows):
        if r:
            ids[n, width - len(r):] = torch.tensor([max(t, 0) if t >= 0 else pad_id for t in r])
            image_index[n, width - len(r):] = torch.tensor(img)
            mask[n, width - len(r):] = 1
    tails = [torch.tensor(it.tail, dtype=torch.long) for it in items]
    tail_ids, tail_mask = right_pad(tails, pad_id)
    labels, _ = right_pad([torch.tensor(it.labels, dtype=torch.long) for it in items], IGNORE)
    batch = {"chunk_ids": ids, "chunk_mask": mask, "chunk_image": image_index, "chunk_span": torch.tensor(spans),
             "chunk_index": torch.tensor(index), "tail_ids": tail_ids, "tail_mask": tail_mask, "labels": labels,
             "task": torch.tensor([TASK_IDS[it.task] for it in items], dtype=torch.long)}
    if images:
        batch["pixels"] = image_path.preprocess(images)
    return batch


def _block_lengths(image_index: Sequence[int]) -> list[int]:
    lengths, t = [], 0
    while t < len(image_index):
        end = t + 1
        if image_index[t] >= 0:
            while end < len(image_index) and image_index[end] == image_index[t]:
                end += 1
        lengths.append(end - t)
        t = end
    return lengths


# ------------------------------------------------------------------------------------------ trainable models
class InterleavedSlotModel(SlotModel):
    """Soft encoder (LoRA + slots) + task markers + the image path; ICAE or KV decoding."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__(llm, config)
        self.style = config.style
        self.encoder_output = "hidden" if config.style == "icae" else "kv"
        self.positions = "standard" if config.style == "icae" else "prefix"
        if image_path is not None:
            self.image_path = image_path  # registered: adapter weights are trainable parameters of this module
        self.slot_schedule = [int(k) for k in (config.slot_schedule or [])]
        self.use_slots = int(config.use_slots) if config.use_slots is not None else None
        self._draw = random.Random(int(config.num_slots))

    def active_slots(self) -> int | None:
        """How many leading slots the decoder reads now: drawn from the schedule in training, ``use_slots`` else."""
        if self.training and self.slot_schedule:
            return self._draw.choice(self.slot_schedule)
        return self.use_slots

    def take_slots(self, encoded, k: int | None):
        """The first ``k`` slots of every chunk (``[N, K, D]`` hidden states or per-layer ``[N, H, K, d]`` KV)."""
        if k is None or k >= self.encoder.num_slots:
            return encoded
        if self.encoder_output == "hidden":
            return encoded[:, :k]
        return [(key[:, :, :k], value[:, :, :k]) for key, value in encoded]

    def embed_chunks(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[N, L, D]``: token embeddings with each image's adapter output scattered into its positions."""
        embeds = self.encoder.embed(batch["chunk_ids"])
        if "pixels" in batch:
            feats = self.images(batch["pixels"])
            embeds = scatter_image_tokens(embeds, batch["chunk_image"], feats.flatten(0, 1), feats.shape[1])
        return embeds

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.get_image_path()(pixels)

    def get_image_path(self):
        path = getattr(self, "image_path", None) or getattr(self, "_llava_path", None)
        if path is None:
            raise InvalidPromptError("this compressor has no image path")
        return path

    def compress_embedded(self, batch: dict[str, Any]):
        chunks = self.chunks_from_batch(batch)
        encoded = self.encoder.encode_embeds(self.embed_chunks(batch), batch["chunk_mask"], batch["chunk_index"],
                                             output=self.encoder_output, positions=self.positions)
        return self.take_slots(encoded, self.active_slots()), chunks

    def decoder_hidden(self, encoded, chunks: Chunks, batch: dict[str, Any]):
        model = IcaeModel if self.style == "icae" else KvModel
        return model.decoder_hidden(self, encoded, chunks, batch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        encoded, chunks = self.compress_embedded(batch)
        hidden, labels = self.decoder_hidden(encoded, chunks, batch)
        loss, accuracy = sliced_lm_loss(hidden, labels, self.encoder.lm_head)
        return {"loss": loss, "token_accuracy": accuracy}


class InterleavedFullModel(nn.Module):
    """The uncompressed reference: the LLM reads the embedded sequence itself; the image path trains, and with
    ``tune_decoder`` a LoRA adapter on the LLM too (the base weights stay frozen)."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__()
        llm.requires_grad_(False)
        object.__setattr__(self, "_llm", llm)  # frozen and not saved: held by reference
        if config.tune_decoder:
            from ..models.lora import add_lora

            # registered, so the trainer optimises and checkpoints the LoRA tensors (only they require grad)
            self.decoder_lora = add_lora(llm, config)
        if image_path is not None:
            self.image_path = image_path

    @property
    def llm(self) -> nn.Module:
        return self._llm

    def get_image_path(self):
        path = getattr(self, "image_path", None) or getattr(self, "_llava_path", None)
        if path is None:
            raise InvalidPromptError("this compressor has no image path")
        return path

    def embed_chunks(self, batch: dict[str, Any]) -> torch.Tensor:
        embeds = self._llm.get_input_embeddings()(batch["chunk_ids"])
        if "pixels" in batch:
            feats = self.get_image_path()(batch["pixels"])
            embeds = scatter_image_tokens(embeds, batch["chunk_image"], feats.flatten(0, 1), feats.shape[1])
        return embeds

    def forward(self, **batch: Any):
        return self.training_step(batch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        context = self.embed_chunks(batch)  # one left-padded row per example
        tails = self._llm.get_input_embeddings()(batch["tail_ids"])
        rows, masks, labels = [], [], []
        for b in range(context.shape[0]):
            keep = batch["chunk_mask"][b].bool()
            rows.append(torch.cat([context[b][keep], tails[b]], 0))
            masks.append(torch.cat([batch["tail_mask"].new_ones(int(keep.sum())), batch["tail_mask"][b]]))
            labels.append(torch.cat([batch["labels"].new_full((int(keep.sum()),), IGNORE), batch["labels"][b]]))
        inputs, _ = right_pad(rows)
        mask, _ = right_pad(masks, 0)
        labels, _ = right_pad(labels, IGNORE)
        backbone = getattr(self._llm, self._llm.base_model_prefix)
        out = backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        loss, accuracy = sliced_lm_loss(out.last_hidden_state, labels, self._llm.get_output_embeddings())
        return {"loss": loss, "token_accuracy": accuracy}

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.training_step(batch).items()}


# ---------------------------------------------------------------------------------------------- compressor
@register_compressor("interleaved")
class InterleavedCompressor(SoftCompressor):
    """Images and text of a prompt -> one shared set of K soft tokens per chunk; the question stays text."""

    family = "multimodal"
    config_class = InterleavedConfig
    encode_batch_chunks = 64

    def __init__(self, config: InterleavedConfig | None = None, *, tokenizer: Any = None,
                 image_path: nn.Module | None = None, **overrides: Any):
        super().__init__(config, tokenizer=tokenizer, **overrides)
        self._image_path_override = image_path

    @classmethod
    def from_small_vlm(cls, vlm: Any, **overrides: Any) -> InterleavedCompressor:
        """Compress interleaved prompts for the vision family's :class:`~mmcompress.vision.small_vlm.SmallVLM`: its
        (trained) encoder and adapter embed the images, a copy of its LLM is the soft encoder (LoRA) and decoder
        (the VLM itself is left untouched)."""
        import copy

        from .vision_path import EncoderAdapterPath

        adapter = copy.deepcopy(vlm.adapter)
        acfg = adapter.config.to_dict()
        fields = {"vision_encoder": f"open_clip:{vlm.encoder.name}" if getattr(vlm.encoder, "kind", "") == "open_clip"
                  else str(getattr(vlm.encoder, "name", "custom")),
                  "adapter": adapter.name, "image_tokens": acfg.pop("tokens"),
                  "adapter_kwargs": {k: v for k, v in acfg.items() if k not in ("in_dim", "out_dim")}}
        fields.update(overrides)
        llm = copy.deepcopy(vlm.llm)
        path = EncoderAdapterPath(copy.deepcopy(vlm.encoder), adapter)
        return cls(model=llm, tokenizer=vlm.tokenizer, image_path=path, **fields)

    # ------------------------------------------------------------------------------------------------ parts
    @property
    def uses_llava(self) -> bool:
        return is_llava(self.llm)

    def build_module(self):
        cfg = self.config
        llm = self.llm
        if cfg.decoder_lora:  # the tuned decoder of an earlier stage, merged before any new LoRA goes on top
            from .decoder_lora import merge_decoder_lora

            llm = self._llm = merge_decoder_lora(llm, cfg.decoder_lora)
        llava = is_llava(llm)
        if llava and cfg.lora_targets == "all-linear":  # LoRA in the language model only, not the vision tower
            cfg = cfg.replace(lora_targets=LLAVA_LORA_TARGETS)
        if cfg.mode == "soft" and cfg.style == "kv":
            from ..models.compat import is_rotary

            if not is_rotary(llm):
                raise ConfigError("style='kv' needs a model with rotary position embeddings (Llama, Qwen, Mistral...)")
        path = self._image_path_override
        if path is None and not llava:
            hidden = llm.get_input_embeddings().weight.shape[1]
            path = build_encoder_adapter(cfg.vision_encoder, cfg.adapter, hidden, cfg.image_tokens,
                                         cfg.adapter_kwargs, train_encoder=cfg.train_vision_encoder,
                                         reduce_to=cfg.reduce_image_tokens)
        if path is not None and not cfg.train_adapter:
            getattr(path, "adapter", path).requires_grad_(False)
        model_cls = InterleavedFullModel if cfg.mode == "full" else InterleavedSlotModel
        module = model_cls(llm, cfg, path)
        if llava and path is None:
            # the projector is LLaVA's adapter: it trains (unless train_adapter is false), the tower stays frozen
            base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
            base.model.multi_modal_projector.requires_grad_(bool(cfg.train_adapter))
            object.__setattr__(module, "_llava_path", LlavaPath(llm, reduce_to=cfg.reduce_image_tokens))
        return module

    @property
    def image_path(self):
        return self.module.get_image_path()

    def set_slots(self, k: int | None) -> InterleavedCompressor:
        """Read only the first ``k`` soft tokens of each chunk from now on (nested slots; ``None``: all of them)."""
        self.config = self.config.replace(use_slots=k)
        if self.config.mode == "soft":
            self.module.use_slots = None if k is None else int(k)
        return self

    @property
    def tokens_per_image(self) -> int:
        return int(self.image_path.tokens_per_image)

    def embedder(self) -> InterleavedEmbedder:
        return InterleavedEmbedder(self.tokenizer, self.llm.get_input_embeddings(), self.image_path)

    def marker(self, task: str):
        if self.config.mode == "full":
            return None
        if task not in TASK_IDS:
            raise ConfigError(f"unknown task {task!r}; use one of {sorted(TASK_IDS)}")
        return self.module.markers[TASK_IDS[task]][None]

    def decoder_mode(self):
        return nullcontext() if self.config.mode == "full" else self.module.encoder.decoder()

    def format_question(self, question: str, task: str) -> str:
        return self.config.qa_template.format(question=question) if task == "qa" else question

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # ---------------------------------------------------------------------------------------------- prepare
    def layout(self, prompt: Any, question: str | None = None, instruction: str | None = None,
               images: Sequence[Any] | None = None) -> tuple[Prompt, Layout]:
        prompt = Prompt.coerce(prompt, question=question, instruction=instruction, images=images)
        if prompt.is_empty():
            raise InvalidPromptError("the prompt is empty: there is nothing to compress")
        layout = split_layout(prompt, keep_trailing_question=self.config.keep_trailing_question)
        if not layout.compressed:
            raise InvalidPromptError("every segment of the prompt is kept; there is nothing to compress")
        return prompt, layout

    def plan_compressed(self, layout: Layout, separator: str = "\n\n") -> SequencePlan:
        return self.embedder().plan(layout.compressed, leading_separator=bool(layout.prefix), separator=separator,
                                    tokens_per_image=self.tokens_per_image)

    def query_ids(self, layout: Layout, separator: str = "\n\n", required: bool = True) -> list[int]:
        """What a question-aware encoder reads after each chunk: the kept text after the compressible part (the
        question). Empty for question-agnostic models."""
        if not self.config.question_aware:
            return []
        text = kept_suffix_text(layout).strip()
        if not text:
            if required:
                raise InvalidPromptError("question_aware compression reads the question while compressing: give it "
                                         "in the prompt (question=..., or a final '...?' sentence), not only to "
                                         "generate()")
            return []
        return self.tokenizer(separator + text, add_special_tokens=False)["input_ids"]

    def example_item(self, prompt: Prompt, answer: str | None, task: str = "qa",
                     target_text: str | None = None) -> EncodedItem:
        """A training example: compress the prompt's compressible part; the decoder reads the kept text (question in
        the QA template) and is trained on ``answer`` (``task="qa"``) or on ``target_text`` (``"ae"``)."""
        layout = split_layout(prompt, keep_trailing_question=self.config.keep_trailing_question)
        if layout.prefix:
            raise InvalidPromptError("training examples with kept text before the compressed part are not supported")
        plan = self.plan_compressed(layout, prompt.separator)
        tok = self.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        if task == "ae":
            prompt_ids, target = [], tok(target_text, add_special_tokens=False)["input_ids"] + eos
        else:
            question = kept_suffix_text(layout)
            prompt_ids = tok(self.format_question(question, "qa"), add_special_tokens=False)["input_ids"]
            target = tok(" " + answer.strip(), add_special_tokens=False)["input_ids"] + eos
        tail = prompt_ids + target
        labels = [IGNORE] * len(prompt_ids) + target
        query = self.query_ids(layout, prompt.separator, required=task != "ae")
        return EncodedItem(plan, tail, labels, "qa" if task != "ae" else "ae", query)

    def collate(self, items: Sequence[EncodedItem]) -> dict[str, torch.Tensor]:
        return collate_items(items, self.image_path, int(self.config.chunk_tokens), self.pad_id,
                             full=self.config.mode == "full")

    # ---------------------------------------------------------------------------------------------- compress
    def compress(self, prompt: Any, *, question: str | None = None, instruction: str | None = None,
                 images: Sequence[Any] | None = None, **kwargs: Any) -> SoftPrompt:
        """Compress one interleaved prompt (a str with ``<image>`` markers and ``images=``, chat messages with image
        parts, or a :class:`Prompt`): images and compressible text become K shared soft tokens per chunk."""
        prompt = Prompt.coerce(prompt, question=question, instruction=instruction, images=images)
        return self.compress_batch([prompt], **kwargs)

    def compress_batch(self, prompts: Iterable[Any], *, question: str | None = None, instruction: str | None = None,
                       progress: bool = False, **kwargs: Any) -> SoftPrompt:
        """Compress many prompts; all their chunks go through the encoder in batches of ``encode_batch_chunks``."""
        kwargs.pop("images", None)
        _reject_budget(kwargs)
        timings = Timings()
        self.module  # noqa: B018  (load outside the timed compression)
        timings["load"], self._load_seconds = self._load_seconds, 0.0
        with timings("prepare"):
            laid = [self.layout(p, question, instruction) for p in prompts]
            if not laid:
                raise InvalidPromptError("no prompts to compress")
            items = [EncodedItem(self.plan_compressed(layout, prompt.separator), [], [], "qa",
                                 self.query_ids(layout, prompt.separator)) for prompt, layout in laid]
        module = self.module
        full = self.config.mode == "full"
        segments: list[SoftSegment] = []
        with timings("compress"), torch.no_grad():
            step = 1 if full else 8
            for start in range(0, len(items), step):
                part = items[start : start + step]
                batch = _to_device(self.collate(part), self.device)
                if full:
                    embeds = module.embed_chunks(batch)
                    keep = batch["chunk_mask"][0].bool()
                    segments.append(SoftSegment(embeddings=embeds[0][keep].detach(), origin_tokens=len(part[0].plan),
                                                chunks=1))
                    continue
                encoded, chunks = module.compress_embedded(batch)
                counts = chunks.chunks_per_span()
                if self.config.style == "icae":
                    per = [x.flatten(0, 1) for x in torch.split(encoded, counts)]
                    segments += [SoftSegment(embeddings=h.detach(), origin_tokens=len(it.plan), chunks=c)
                                 for h, it, c in zip(per, part, counts)]
                else:
                    per = spans_kv(encoded, chunks)
                    segments += [SoftSegment(kv=tuple((k.detach(), v.detach()) for k, v in kv),
                                             origin_tokens=len(it.plan), chunks=c)
                                 for kv, it, c in zip(per, part, counts)]
        out_items, origin, compressed = [], [], []
        with timings("count"):
            for (prompt, layout), soft, item in zip(laid, segments, items):
                soft.role = "context"
                soft.text = prompt.render()
                pieces = [*layout.prefix, soft, *layout.suffix]
                out_items.append(pieces)
                kept = [s.text for s in layout.prefix + layout.suffix if isinstance(s, TextSegment)]
                kept_tokens = sum(self.count_tokens(kept)) if kept else 0
                origin.append(kept_tokens + len(item.plan))
                compressed.append(kept_tokens + soft.num_tokens)
        timings["total"] = timings["prepare"] + timings["compress"] + timings["count"]
        extras = {"tokens_per_image": self.tokens_per_image, "images": [len(layout.images) for _, layout in laid]}
        return SoftPrompt(out_items, self.name, origin, compressed, dict(timings), extras)

    # ---------------------------------------------------------------------------------------------- generate
    def generate(self, soft_prompts, question=None, *, task: str = "qa", max_new_tokens=None, **generate_kwargs):
        """Answer from soft prompts (ICAE style and full mode: ``inputs_embeds``; KV style: the decoder cache)."""
        if self.config.mode == "soft" and self.config.style == "kv":
            return KvCompressor.generate(self, soft_prompts, question, task=task, max_new_tokens=max_new_tokens,
                                         **generate_kwargs)
        return super().generate(soft_prompts, question, task=task, max_new_tokens=max_new_tokens, **generate_kwargs)

    def prefix_kv(self, pieces):
        return KvCompressor.prefix_kv(self, pieces)

    def answer(self, prompts: Sequence[Any], *, batch_size: int = 8, **generate_kwargs: Any) -> list[str]:
        """Compress and answer many prompts (compress_batch + generate in batches)."""
        out: list[str] = []
        prompts = list(prompts)
        for start in range(0, len(prompts), batch_size):
            soft = self.compress_batch(prompts[start : start + batch_size])
            out += [t.strip() for t in self.generate(soft, **generate_kwargs)]
        return out

    # ------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, path):
        """Trained tensors (adapter, LoRA, slots, markers) plus the image path's frozen encoder: a randomly initialised
        tower cannot be rebuilt from its name, so it travels with the compressor (``image_path.safetensors``)."""
        from pathlib import Path

        from safetensors.torch import save_file

        path = Path(super().save_pretrained(path))
        own = getattr(self.module, "image_path", None)
        if own is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in own.state_dict().items()},
                      str(path / IMAGE_PATH_FILE))
        self._save_decoder_lora(path)
        return path

    def _save_decoder_lora(self, path) -> None:
        """The tuned decoder travels in peft's format: the adapter this model trained (``decoder_lora/``, what a next
        stage's ``decoder_lora`` reads) and the one merged into its decoder (``inherited_decoder_lora/``)."""
        import shutil

        from .decoder_lora import DECODER_LORA_DIR, INHERITED_LORA_DIR, find_decoder_lora

        trained = getattr(self.module, "decoder_lora", None)
        if trained is not None:
            trained.save_pretrained(str(path / DECODER_LORA_DIR))
        if self.config.decoder_lora:
            source = find_decoder_lora(self.config.decoder_lora)
            if source.resolve() != (path / INHERITED_LORA_DIR).resolve():
                shutil.copytree(source, path / INHERITED_LORA_DIR, dirs_exist_ok=True)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        from pathlib import Path

        from .decoder_lora import INHERITED_LORA_DIR

        inherited = Path(path) / INHERITED_LORA_DIR
        if "decoder_lora" not in overrides and inherited.is_dir():  # the saved copy, wherever the original went
            overrides["decoder_lora"] = str(inherited)
        compressor = super().from_pretrained(path, **overrides)
        if getattr(compressor.module, "image_path", None) is not None and (Path(path) / IMAGE_PATH_FILE).is_file():
            compressor.load_image_path(path)
        return compressor

    def load_image_path(self, source) -> None:
        """Start this model's image path (encoder + adapter) from another saved interleaved model: the full-mode
        reference's trained image path is the aligned one a soft run starts from (LLaVA's stage 1)."""
        from pathlib import Path

        from safetensors.torch import load_file

        file = Path(source) / IMAGE_PATH_FILE if Path(source).is_dir() else Path(source)
        if not file.is_file():
            raise ConfigError(f"no image path weights at {file}: give a folder saved by the interleaved compressor "
                              f"(it holds {IMAGE_PATH_FILE}) or that file itself")
        own = getattr(self.module, "image_path", None)
        if own is None:
            raise ConfigError("this interleaved model has no image path of its own (an HF LLaVA decoder uses its "
                              "tower and projector); load_image_path applies to encoder + adapter backbones")
        state = load_file(str(file))
        # checked before loading: load_state_dict copies the tensors that fit before it raises on the rest
        expected = own.state_dict()
        mismatched = sorted(k for k in set(expected) | set(state)
                            if k not in state or k not in expected or state[k].shape != expected[k].shape)
        if mismatched:
            raise ConfigError(f"{file} does not fit this model's image path (vision_encoder / adapter / image_tokens "
                              f"differ): {mismatched[:3]}")
        own.load_state_dict(state)

    def load_trainable(self, weights: dict[str, Any], source: str = "weights") -> None:
        module = self.module
        expected = {n for n, p in module.named_parameters() if p.requires_grad}
        missing = sorted(expected - set(weights))
        if missing:
            raise ConfigError(f"{source} does not match interleaved with this config: missing {missing[:3]} "
                              "(was it saved with another style / mode / adapter / lora setting?)")
        own = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                if name not in own:
                    raise ConfigError(f"{source} has a tensor {name!r} this compressor does not have")
                own[name].copy_(value.to(own[name].device, own[name].dtype))


def kept_suffix_text(layout: Layout) -> str:
    """The kept text after the compressible part (the question): what the decoder reads after the soft tokens."""
    return "\n".join(s.text for s in layout.suffix if isinstance(s, TextSegment))


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def rendered_text(prompt: Prompt, image_token: str = "<image>") -> str:
    """What an autoencoding target reads: the compressible text with images as their marker."""
    layout = split_layout(prompt)
    parts = []
    for i, seg in enumerate(layout.compressed):
        sep = "" if i == 0 else (prompt.separator if seg.sep is None else seg.sep)
        parts.append(sep + (seg.text if isinstance(seg, TextSegment) else image_token))
    return "".join(parts)


