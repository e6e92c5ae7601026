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

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compressor import Timings, batch_list
from ..errors import ConfigError, InvalidPromptError
from ..prompt import Prompt, TextSegment
from ..registry import register_compressor
from ..results import SoftPrompt, SoftSegment
from ..soft.base import SoftCompressor, _reject_budget
from ..soft.encoder import QATemplate, SlotDecoding
from ..soft.losses import IGNORE
from .batches import EncodedItem, collate_items
from .config import InterleavedConfig
from .embedding import InterleavedEmbedder, Layout, SequencePlan, split_layout
from .models import InterleavedFullModel
from .slot_styles import SLOT_STYLES, SlotStyle
from .vision_path import LlavaPath, build_encoder_adapter, is_llava

IMAGE_PATH_FILE = "image_path.safetensors"
LLAVA_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# ---------------------------------------------------------------------------------------------- compressor
@register_compressor("interleaved")
class InterleavedCompressor(QATemplate, SoftCompressor):
    """An interleaved image-text prompt as one shared set of soft tokens (``mode="soft"``), or uncompressed (``"full"``).

    The base of the soft compressor (:class:`InterleavedSoftCompressor`) and the uncompressed reference
    (:class:`InterleavedReference`): the image path, the embedding and layout of a prompt, batches, and saving /
    loading. ``InterleavedCompressor(...)`` (and ``create_compressor("interleaved")``) builds the class of the
    config's ``mode``."""

    family = "multimodal"
    config_class = InterleavedConfig
    encode_batch_chunks = 64
    full_rows = False  # collate: one unchunked row per example (the reference) instead of chunks
    prompts_per_batch = 8

    def __new__(cls, config: InterleavedConfig | None = None, **overrides: Any):
        mode = overrides.get("mode", config.mode if isinstance(config, InterleavedConfig) else InterleavedConfig.mode)
        of_mode = InterleavedReference if mode == "full" else InterleavedSoftCompressor
        if cls is InterleavedCompressor:
            cls = of_mode
        elif not issubclass(cls, of_mode):
            raise ConfigError(f"{cls.__name__} cannot be built with mode={mode!r}; use InterleavedCompressor")
        return super().__new__(cls)

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
        self.check_model(llm)
        path = self._image_path_override
        if path is None and not llava:
            hidden = llm.get_input_embeddings().weight.shape[1]
            path = build_encoder_adapter(cfg.vision_encoder, cfg.adapter, hidden, cfg.image_tokens,
                                         cfg.adapter_kwargs, train_encoder=cfg.train_vision_encoder,
                                         reduce_to=cfg.reduce_image_tokens)
        if path is not None and not cfg.train_adapter:
            getattr(path, "adapter", path).requires_grad_(False)
        module = self.module_class(llm, cfg, path)
        if llava and path is None:
            # the projector is LLaVA's adapter: it trains (unless train_adapter is false), the tower stays frozen
            base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
            base.model.multi_modal_projector.requires_grad_(bool(cfg.train_adapter))
            object.__setattr__(module, "_llava_path", LlavaPath(llm, reduce_to=cfg.reduce_image_tokens))
        return module

    @property
    def image_path(self):
        return self.module.get_image_path()

    def check_model(self, llm: nn.Module) -> None:
        """Refuse a backbone this model cannot use, before building anything on it."""

    def set_slots(self, k: int | None) -> InterleavedCompressor:
        """Read only the first ``k`` soft tokens of each chunk from now on (nested slots; ``None``: all of them)."""
        self.config = self.config.replace(use_slots=k)
        return self

    @property
    def tokens_per_image(self) -> int:
        return int(self.image_path.tokens_per_image)

    def embedder(self) -> InterleavedEmbedder:
        return InterleavedEmbedder(self.tokenizer, self.llm.get_input_embeddings(), self.image_path)

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
                             full=self.full_rows)

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
            laid = [self.layout(p, question, instruction) for p in batch_list(prompts)]
            if not laid:
                raise InvalidPromptError("no prompts to compress")
            items = [EncodedItem(self.plan_compressed(layout, prompt.separator), [], [], "qa",
                                 self.query_ids(layout, prompt.separator)) for prompt, layout in laid]
        segments: list[SoftSegment] = []
        with timings("compress"), torch.no_grad():
            for start in range(0, len(items), self.prompts_per_batch):
                part = items[start : start + self.prompts_per_batch]
                segments += self.encode_items(part, _to_device(self.collate(part), self.device))
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

    def encode_items(self, items: Sequence[EncodedItem], batch: dict[str, Any]) -> list[SoftSegment]:
        """One soft segment per item of a collated batch: what the decoder reads in place of its compressible part."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- generate
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

    def load_trainable(self, weights: dict[str, Any], source: str = "weights", fresh: Sequence[str] = ()) -> None:
        module = self.module
        expected = {n for n, p in module.named_parameters() if p.requires_grad}
        missing = sorted(n for n in expected - set(weights) if not any(f in n for f in fresh))  # fresh: new adapter
        if missing:
            raise ConfigError(f"{source} does not match interleaved with this config: missing {missing[:3]} "
                              "(was it saved with another style / mode / adapter / lora setting?)")
        own = dict(module.named_parameters())
        for name, value in weights.items():  # all checked before any tensor is copied
            if name not in own:
                raise ConfigError(f"{source} has a tensor {name!r} this compressor does not have")
            if tuple(value.shape) != tuple(own[name].shape):
                raise ConfigError(f"{source} has {name!r} of shape {tuple(value.shape)}, this compressor "
                                  f"{tuple(own[name].shape)} (saved with other num_slots / lora settings?)")
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value.to(own[name].device, own[name].dtype))


class InterleavedSoftCompressor(SlotDecoding, InterleavedCompressor):
    """``mode="soft"``: the soft encoder turns each chunk of the compressible part into K slots, which the frozen
    decoder reads in the way of the slot style (:mod:`.slot_styles`), chosen once from ``config.style``."""

    @property
    def slots(self) -> SlotStyle:
        return SLOT_STYLES[self.config.style]

    @property
    def module_class(self):
        return self.slots.model_class

    def check_model(self, llm: nn.Module) -> None:
        self.slots.check_model(llm)

    def set_slots(self, k: int | None) -> InterleavedCompressor:
        super().set_slots(k)
        self.module.use_slots = None if k is None else int(k)
        return self

    def load_text_compressor(self, source) -> None:
        """Start the soft encoder (its LoRA, the decoder adapter if any, the task markers) from a trained text
        compressor of the same style: a shipped name (``soft-smollm2-4x``) or a folder saved by ``meanpool`` / ``kv``
        / ``icae``. The image path is not touched; the settings that shape those tensors must match."""
        from ..factory import load_saved_weights, read_saved_meta, trained_or_saved
        from ..soft.base import CONFIG_FILE, WEIGHTS_FILE

        folder = trained_or_saved(source, "init_text_compressor")
        meta = read_saved_meta(folder, CONFIG_FILE)
        if meta.get("compressor") != self.config.style:
            raise ConfigError(f"{source} is a {meta.get('compressor')!r} compressor; style={self.config.style!r} "
                              f"can start only from a {self.config.style!r} one")
        saved = meta["config"]
        fields = ("model", "lora_r", "lora_alpha", "lora_targets", "decoder_lora_r")
        differ = [f"{f}: {saved.get(f)!r} there, {getattr(self.config, f)!r} here" for f in fields
                  if saved.get(f) != getattr(self.config, f)
                  and not (f == "model" and not isinstance(self.config.model, str))]  # a model object: trusted
        if differ:
            raise ConfigError(f"{source} does not fit this interleaved model ({'; '.join(differ)}); set the same values")
        # the image path is this model's own (the text compressor has none): only it may be absent from the weights
        self.load_trainable(load_saved_weights(folder / WEIGHTS_FILE), source=str(source), fresh=("image_path.",))

    def encode_items(self, items, batch):
        encoded, chunks = self.module.compress_embedded(batch)
        return self.slots.segments(encoded, chunks, [len(it.plan) for it in items])

    def generate(self, soft_prompts, question=None, *, task: str = "qa", max_new_tokens=None, **generate_kwargs):
        """Answer from soft prompts (ICAE style: ``inputs_embeds``; KV style: the decoder cache)."""
        return self.slots.generate(self, soft_prompts, question, task=task, max_new_tokens=max_new_tokens,
                                   **generate_kwargs)


class InterleavedReference(InterleavedCompressor):
    """``mode="full"``, the uncompressed reference (LLaVA style): the decoder reads every adapter token and text
    token of the compressible part itself; no slots, no marker."""

    module_class = InterleavedFullModel
    full_rows = True
    prompts_per_batch = 1

    def marker(self, task: str):
        return None

    def encode_items(self, items, batch):
        embeds = self.module.embed_chunks(batch)
        keep = batch["chunk_mask"][0].bool()
        return [SoftSegment(embeddings=embeds[0][keep].detach(), origin_tokens=len(items[0].plan), chunks=1)]


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


