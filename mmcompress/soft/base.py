"""The soft-compression interface: a prompt goes in, a :class:`~mmcompress.results.SoftPrompt` comes out, and a frozen
LLM generates from it.

Every soft method (``icae``, ``kv``, ``xrag``, ``gist``, ...) is a :class:`SoftCompressor`:

- :meth:`SoftCompressor.compress` turns a prompt (str, list of documents, chat messages, :class:`Prompt`) into a
  :class:`SoftPrompt`. Compressible text segments (documents, free text) become :class:`SoftSegment` spans; kept
  segments (instructions, questions, anything marked ``keep``) stay text. :meth:`compress_batch` does many prompts
  in one encoder batch.
- :meth:`SoftCompressor.generate` answers from a batch of soft prompts through the decoder's own ``generate()``:
  soft embeddings and kept text are laid out in order in ``inputs_embeds`` (methods whose soft prompt is a KV cache
  override :meth:`generate`).
- ``save_pretrained(path)`` writes only what was trained (``trainable.safetensors``) plus ``mmcompress_config.json``
  naming the method, its config and the base model; ``from_pretrained(path)`` and ``create_compressor(path)`` load it.

A new method subclasses :class:`SoftCompressor` and implements two things:

    build_module(self) -> nn.Module             # the trainable parts around self.llm (adapter, slots, projector...)
    encode_spans(self, texts) -> [SoftSegment]  # compress many texts in one batch

and optionally :meth:`marker` (an embedding placed between the soft prompt and the text that follows, e.g.
ICAE's [LM]/[FT] tokens) or :meth:`generate` itself. A query-guided method sets :attr:`reads_question`: its
``encode_spans(texts, questions=...)`` then gets each span's prompt question.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..compressor import Compressor, CompressorConfig, Timings, batch_list
from ..errors import ConfigError, InvalidPromptError
from ..prompt import ImageSegment, Prompt, TextSegment
from ..results import SoftPrompt, SoftSegment

WEIGHTS_FILE = "trainable.safetensors"
CONFIG_FILE = "mmcompress_config.json"  # the same name factory.create_compressor looks for
FORMAT_VERSION = 1


@dataclass
class SoftConfig(CompressorConfig):
    """Fields shared by soft methods.

    ``model`` is the base LLM: the frozen decoder, and (for encoder methods) the encoder under a LoRA adapter.
    ``num_slots`` soft tokens replace each chunk of at most ``chunk_tokens`` input tokens, so the nominal ratio is
    ``chunk_tokens / num_slots``: the ratio is fixed by the trained slots, so soft configs have no ``rate`` /
    ``target_tokens``; the achieved ratio is on the result (:attr:`SoftPrompt.rate` / :attr:`SoftPrompt.ratio`).
    ``max_new_tokens`` is the default answer length of :meth:`generate`.
    """

    model: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    num_slots: int = 32
    chunk_tokens: int = 128
    max_new_tokens: int = 64
    model_kwargs: dict[str, Any] | None = None  # passed to from_pretrained (device_map, quantization_config...)
    # fields whose default follows the method's official code, with the value they had before (mmcompress's own
    # variant): a saved compressor whose config lacks one of them was saved before the change and keeps that value
    MMCOMPRESS_VARIANT: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.num_slots) < 1:
            raise ConfigError(f"num_slots must be >= 1, got {self.num_slots}")
        if int(self.chunk_tokens) < 1:
            raise ConfigError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if int(self.max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def nominal_ratio(self) -> float:
        return self.chunk_tokens / self.num_slots


class DecoderCache(NamedTuple):
    """What :meth:`SoftCompressor.decoder_cache` gives: ``model`` decodes (inside ``mode()``) from ``context``
    after ``tail``, the prompt's kept text that follows its last soft span."""

    model: Any
    context: Any  # mmcompress.models.decoding.CachedContext
    tail: str
    mode: Callable[[], Any]


class SoftCompressor(Compressor):
    """Base of soft methods; see the module docstring for what a subclass implements.

    ``model=`` / ``tokenizer=`` accept loaded objects instead of a name (tests pass tiny models this way). The base
    LLM is loaded as a private copy, because adapters are injected into it and a shared cached model (used by a
    hard scorer, say) must stay untouched.
    """

    family: ClassVar[str] = "soft"
    reads_question: ClassVar[bool] = False  # True: encode_spans(texts, questions=...) (query-guided encoders)
    config_class: ClassVar[type[CompressorConfig]] = SoftConfig

    def __init__(self, config: SoftConfig | None = None, *, tokenizer: Any = None, **overrides: Any):
        model_obj = overrides.pop("model", None)
        if model_obj is not None and not isinstance(model_obj, str):
            if tokenizer is None:
                raise ConfigError("pass tokenizer= together with a model object")
            self._llm = model_obj
            overrides.setdefault("model", getattr(model_obj, "name_or_path", None) or "custom")
        else:
            self._llm = None
            if model_obj is not None:
                overrides["model"] = model_obj
        super().__init__(config, **overrides)
        self._tokenizer = tokenizer
        self._module = None
        self._load_seconds = 0.0

    # ------------------------------------------------------------------------------------------ model access
    @property
    def llm(self):
        """The base causal LM (decoder; encoder under the adapter), loaded on first use."""
        if self._llm is None:
            self._llm, self._tokenizer = load_private_model(self.config.model, self.config.device, self.config.dtype,
                                                              self.config.model_kwargs)
        return self._llm

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model)
        return self._tokenizer

    @property
    def module(self):
        """The nn.Module holding every trainable tensor (and the base LLM); what the trainer optimises."""
        if self._module is None:
            t0 = time.perf_counter()
            llm = self.llm
            self._module = self.build_module()
            self._module.to(next(llm.parameters()).device)
            self._module.eval()
            self._load_seconds += time.perf_counter() - t0
        return self._module

    @property
    def device(self):
        return next(self.llm.parameters()).device

    def build_module(self):
        """Build the trainable parts around ``self.llm`` (called once)."""
        raise NotImplementedError

    def encode_spans(self, texts: Sequence[str]) -> list[SoftSegment]:
        """Compress each text into one :class:`SoftSegment` (one batch of encoder work for all of them)."""
        raise NotImplementedError

    def marker(self, task: str):
        """An embedding ``[M, D]`` placed after the soft prompt for ``task`` ("ae", "lm", "qa"), or None."""
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        texts = list(texts)
        if not texts:
            return []
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # ---------------------------------------------------------------------------------------------- compress
    def compress(self, prompt: Any, *, question: str | None = None, instruction: str | None = None,
                 **kwargs: Any) -> SoftPrompt:
        """Compress one prompt: compressible text segments become soft spans, kept segments stay text."""
        return self.compress_batch([prompt], question=question, instruction=instruction, **kwargs)

    def compress_batch(self, prompts: Iterable[Any], *, question: str | None = None, instruction: str | None = None,
                       progress: bool = False, **kwargs: Any) -> SoftPrompt:
        """Compress many prompts with one encoder batch for all their compressible spans; returns one SoftPrompt."""
        import torch

        _reject_budget(kwargs)
        timings = Timings()
        with timings("prepare"):
            coerced = [self._coerce(p, question, instruction) for p in batch_list(prompts)]
            if not coerced:
                raise InvalidPromptError("no prompts to compress")
            spans = [(b, i) for b, p in enumerate(coerced) for i, s in enumerate(p.segments) if s.compressible]
        self.module  # noqa: B018  (load outside the timed compression)
        timings["load"], self._load_seconds = self._load_seconds, 0.0
        with timings("compress"), torch.no_grad():
            texts = [coerced[b].segments[i].text for b, i in spans]
            questions = {"questions": [coerced[b].question for b, _ in spans]} if self.reads_question else {}
            encoded = self.encode_spans(texts, **questions) if spans else []
        by_position = dict(zip(spans, encoded))
        items, origin, compressed = [], [], []
        with timings("count"):
            for b, p in enumerate(coerced):
                pieces = []
                for i, seg in enumerate(p.segments):
                    if (b, i) in by_position:
                        soft = by_position[(b, i)]
                        soft.role = seg.role.value
                        pieces.append(soft)
                    else:
                        pieces.append(seg)
                items.append(pieces)
                origin.append(self.count_tokens([p.text])[0])
                # kept text is counted as the decoder reads it, separators included
                kept = "".join(((p.separator if s.sep is None else s.sep) if i else "") + s.text
                               for i, s in enumerate(p.segments) if (b, i) not in by_position)
                compressed.append((self.count_tokens([kept])[0] if kept else 0)
                                  + sum(s.num_tokens for s in pieces if isinstance(s, SoftSegment)))
        timings["total"] = timings["prepare"] + timings["compress"] + timings["count"]
        return SoftPrompt(items, self.name, origin, compressed, dict(timings))

    def _coerce(self, prompt: Any, question: str | None, instruction: str | None) -> Prompt:
        prompt = Prompt.coerce(prompt, question=question, instruction=instruction)
        if prompt.is_empty():
            raise InvalidPromptError("the prompt is empty: there is no text to compress")
        if any(isinstance(s, ImageSegment) for s in prompt.segments):
            raise InvalidPromptError(f"{self.name} compresses text; use an interleaved image-text method for images")
        return prompt

    # ---------------------------------------------------------------------------------------------- generate
    def generate(self, soft_prompts: SoftPrompt | Sequence[SoftPrompt], question: str | Sequence[str] | None = None,
                 *, task: str = "qa", max_new_tokens: int | None = None, **generate_kwargs: Any) -> list[str]:
        """Generate from each prompt of ``soft_prompts`` (one batched ``generate()`` call); returns the texts.

        ``question`` (one string for all, or one per prompt) is appended as text after the soft prompt and its
        kept segments. ``task`` picks the marker: "qa" (answer), "lm" (continue), "ae" (regenerate the input).
        Other keyword arguments go to the LLM's ``generate()`` (``do_sample``, ``num_beams``...; greedy by default).
        """
        import torch

        inputs, mask = self._decoder_batch(soft_prompts, question, task)
        kwargs = self._generate_defaults(max_new_tokens)
        kwargs.update(generate_kwargs)
        with torch.no_grad(), self.decoder_mode():
            out = self.llm.generate(inputs_embeds=inputs, attention_mask=mask, **kwargs)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def next_token_logits(self, soft_prompts: SoftPrompt | Sequence[SoftPrompt],
                          question: str | Sequence[str] | None = None, *, task: str = "qa"):
        """``[B, V]`` float32 logits of the decoder's next token after each prompt: what :meth:`generate` scores at
        its first step (parity checks against official code, scoring answers)."""
        import torch

        inputs, mask = self._decoder_batch(soft_prompts, question, task)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), self.decoder_mode():
            out = self.llm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.logits[:, -1].float()

    def _decoder_batch(self, soft_prompts, question, task: str):
        soft = _as_batch(soft_prompts)
        questions = _per_item(question, len(soft))
        return left_pad([self.decoder_embeddings(item, task, q) for item, q in zip(soft.items, questions)])

    def reconstruct(self, soft_prompts: SoftPrompt | Sequence[SoftPrompt], **kwargs: Any) -> list[str]:
        """Regenerate the compressed text from the soft prompt (the autoencoding task)."""
        return self.generate(soft_prompts, None, task="ae", **kwargs)

    def decoder_mode(self):
        """Context manager in which ``self.llm`` is the frozen decoder (e.g. the adapter switched off)."""
        from contextlib import nullcontext

        return nullcontext()

    def decoder_cache(self, pieces: Sequence[Any], task: str = "qa") -> DecoderCache:
        """One prompt's pieces up to its last soft span (and this method's marker for ``task``) read into a KV cache,
        laid out as :meth:`generate` lays them out; the kept text after it is returned to be read after the cache.
        Lets a caller decode one prompt from a cache it can measure (the QA harness's soft systems)."""
        import torch

        from ..models.decoding import prefill

        head, tail = self.split_pieces(pieces, task, None)
        with torch.no_grad(), self.decoder_mode():
            context = prefill(self.llm, inputs_embeds=self.decoder_embeddings(head, task, None)[None])
        return DecoderCache(self.llm, context, "".join(tail), self.decoder_mode)

    def qa_system(self, reader: Any, **options: Any):
        """This compressor as a system of the QA harness (``mmcompress eval --method ...``)."""
        from ..evaluation.soft_reader_system import SoftReaderSystem

        return SoftReaderSystem(self, reader, **options)

    def _generate_defaults(self, max_new_tokens: int | None) -> dict[str, Any]:
        tok = self.tokenizer
        return {"max_new_tokens": int(max_new_tokens or self.config.max_new_tokens), "do_sample": False,
                "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                "eos_token_id": tok.eos_token_id}

    def embed_text(self, text: str):
        """``[T, D]`` decoder input embeddings of ``text`` (no special tokens)."""
        import torch

        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        emb = self.llm.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=self.device))

    def embed_ids(self, ids: Sequence[int] | None):
        """``[len(ids), D]`` decoder input embeddings of fixed token ids (None or empty: ``[0, D]``)."""
        import torch

        ids = torch.tensor(list(ids or []), dtype=torch.long, device=self.device)
        return self.llm.get_input_embeddings()(ids)

    def format_question(self, question: str, task: str) -> str:
        """How a question reads after the soft prompt (methods trained with a QA template apply it here)."""
        return question

    def split_pieces(self, pieces: Sequence[Any], task: str, question: str | None) -> tuple[list[Any], list[str]]:
        """Split one prompt into ``(head, tail texts)``: the head runs up to the last soft span; the marker goes
        between them; the tail is the kept text after the last span (questions formatted for ``task``) and then
        ``question``. Text after a piece starts with its separator."""
        last = max((k for k, p in enumerate(pieces) if isinstance(p, SoftSegment)), default=-1)
        head, tail = list(pieces[: last + 1]), []
        for k in range(last + 1, len(pieces)):
            piece = pieces[k]
            text = self.format_question(piece.text, task) if piece.role.value == "question" else piece.text
            sep = "" if k == last + 1 else (piece.sep if piece.sep is not None else "\n\n")
            tail.append(sep + text)
        if question:
            tail.append(("\n\n" if tail else "") + self.format_question(question, task))
        return head, tail

    def decoder_embeddings(self, pieces: Sequence[Any], task: str, question: str | None):
        """``[T, D]``: one prompt's decoder input: its pieces up to the last soft span (soft tokens as they are,
        text embedded), this method's marker for ``task``, then the kept text after it and ``question``."""
        import torch

        return torch.cat([p for p, _ in self.decoder_parts(pieces, task, question) if p.shape[0]], 0)

    def decoder_parts(self, pieces: Sequence[Any], task: str, question: str | None) -> list[tuple[Any, bool]]:
        """The pieces of :meth:`decoder_embeddings` in order, each ``(embeddings [n, D], is_soft)``."""
        head, tail = self.split_pieces(pieces, task, question)
        parts = []
        for k, piece in enumerate(head):
            if isinstance(piece, SoftSegment):
                if piece.embeddings is None:
                    raise ConfigError(f"{self.name} got a KV soft segment; generate it with the method that made it")
                parts.append((piece.embeddings.to(self.device, self.llm.dtype), True))
            else:
                sep = (piece.sep if piece.sep is not None else "\n\n") if k else ""
                parts.append((self.embed_text(sep + piece.text), False))
        marker = self.marker(task)
        if marker is not None:
            parts.append((marker.to(self.device, self.llm.dtype), False))
        if tail:
            parts.append((self.embed_text("".join(tail)), False))
        return parts

    # ------------------------------------------------------------------------------------------- save / load
    def trainable_state_dict(self) -> dict[str, Any]:
        """Every trained tensor (``requires_grad``) of :attr:`module`, by parameter name."""
        return {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}

    def save_pretrained(self, path: str | Path, *, push_to_hub: bool = False, repo_id: str | None = None,
                        hub_layout: bool | None = None, card: dict[str, Any] | None = None,
                        private: bool | None = None) -> Path:
        """Write ``trainable.safetensors`` (trained tensors only) and ``mmcompress_config.json`` to ``path``.

        ``hub_layout`` (implied by ``push_to_hub``) adds a model card and the LoRA in peft's format
        (:func:`mmcompress.hub.write_hub_files`; ``card``: ``training_data``, ``metrics``, ``command``, ``title``);
        ``push_to_hub`` then uploads the folder to ``repo_id``."""
        if push_to_hub and not repo_id:
            raise ConfigError("push_to_hub=True needs repo_id='org/name'")
        path = self._save_files(path)
        if push_to_hub or hub_layout:
            from ..hub import write_hub_files

            write_hub_files(self, path, card)
        if push_to_hub:
            from ..hub import push_folder

            push_folder(path, repo_id, private=private)
        return path

    def _save_files(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state_dict(), str(path / WEIGHTS_FILE))
        meta = {"compressor": self.name, "family": self.family, "format_version": FORMAT_VERSION,
                "base_model": self.config.model, "config": self.config.to_dict()}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any):
        """Load a compressor saved by :meth:`save_pretrained` (``model=`` may override the base model)."""
        from ..factory import load_saved_weights, read_saved_meta
        from ..models.lora import added_adapters, shrink_adapters

        path = Path(path)
        meta = read_saved_meta(path, CONFIG_FILE)
        if meta.get("compressor") != cls.name and cls.name:
            raise ConfigError(f"{path} holds a {meta.get('compressor')!r} compressor, not {cls.name!r}")
        fields = dict(meta["config"])
        for legacy in ("rate", "target_tokens"):  # saved before soft configs dropped the (unused) token budget
            fields.pop(legacy, None)
        for name, before in getattr(cls.config_class, "MMCOMPRESS_VARIANT", {}).items():
            fields.setdefault(name, before)  # saved before the default followed the official code
        model_obj = overrides.pop("model", None)
        fields.update(overrides)
        if model_obj is not None and isinstance(model_obj, str):
            fields["model"] = model_obj
            model_obj = None
        tokenizer = fields.pop("tokenizer", None)
        config = cls.config_class.from_dict(fields)
        compressor = cls(config, model=model_obj, tokenizer=tokenizer) if model_obj is not None else cls(config)
        weights, _ = shrink_adapters(load_saved_weights(path / WEIGHTS_FILE), meta["config"], config, str(path))
        compressor.load_trainable(weights, source=str(path), fresh=added_adapters(meta["config"], config))
        return compressor

    def load_trainable(self, weights: dict[str, Any], source: str = "weights", fresh: Sequence[str] = ()) -> None:
        """Load trained tensors into :attr:`module`; every trainable parameter must be present, except those whose
        names contain one of ``fresh`` (a newly added adapter, which keeps its initialisation)."""
        module = self.module
        expected = {n for n, p in module.named_parameters() if p.requires_grad}
        missing = sorted(n for n in expected - set(weights) if not any(f in n for f in fresh))
        params = dict(module.named_parameters())
        unexpected = sorted(set(weights) - set(params))
        unexpected += sorted(n for n in set(weights) & set(params) if tuple(weights[n].shape) != tuple(params[n].shape))
        if missing or unexpected:
            raise ConfigError(f"{source} does not match {self.name} with this config: missing {missing[:3]}, "
                              f"unexpected or mis-shaped {unexpected[:3]} (was it saved with other num_slots / lora settings?)")
        module.load_state_dict(weights, strict=False)


# ---------------------------------------------------------------------------------------------------- helpers
def load_private_model(name: str, device: str = "auto", dtype: Any = "auto",
                       model_kwargs: dict[str, Any] | None = None):
    """A fresh copy of a causal LM (not the process-wide cached one) and its tokenizer."""
    from ..models.loading import _load_language_model, pick_device, pick_dtype, resolve_model

    path = resolve_model(name)
    device = pick_device(device)
    lm = _load_language_model.__wrapped__(path, device, pick_dtype(dtype, device), str(name),
                                          tuple((model_kwargs or {}).items()))
    return lm.model, lm.tokenizer


def left_pad(sequences: Sequence[Any]):
    """Stack ``[T_i, D]`` tensors into ``[B, T_max, D]`` padded on the left (for generation), with the mask."""
    import torch

    width = max(s.shape[0] for s in sequences)
    ref = sequences[0]
    out = ref.new_zeros(len(sequences), width, *ref.shape[1:])
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=ref.device)
    for b, s in enumerate(sequences):
        out[b, width - s.shape[0]:] = s
        mask[b, width - s.shape[0]:] = 1
    return out, mask


def right_pad(sequences: Sequence[Any], value: float = 0):
    """Stack ``[T_i, ...]`` tensors into ``[B, T_max, ...]`` padded on the right, with the mask."""
    import torch

    width = max(s.shape[0] for s in sequences)
    ref = sequences[0]
    out = ref.new_full((len(sequences), width, *ref.shape[1:]), value)
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=ref.device)
    for b, s in enumerate(sequences):
        out[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = 1
    return out, mask


def _as_batch(soft_prompts: SoftPrompt | Sequence[SoftPrompt]) -> SoftPrompt:
    if isinstance(soft_prompts, SoftPrompt):
        return soft_prompts
    if isinstance(soft_prompts, Sequence) and soft_prompts and all(isinstance(p, SoftPrompt) for p in soft_prompts):
        return SoftPrompt.concat(list(soft_prompts))
    raise InvalidPromptError("generate() takes a SoftPrompt (from compress / compress_batch) or a list of them")


def _per_item(value: str | Sequence[str] | None, n: int) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise InvalidPromptError(f"got {len(value)} questions for {n} soft prompts")
    return value


def _reject_budget(kwargs: dict[str, Any]) -> None:
    budget = {k for k in ("rate", "target_tokens") if kwargs.get(k) is not None}
    if budget:
        raise ConfigError(f"soft compressors have a fixed ratio (chunk_tokens / num_slots); {sorted(budget)} "
                          "cannot be set per call")
    unknown = set(kwargs) - {"rate", "target_tokens", "images", "target_tokenizer"}
    if unknown:
        raise ConfigError(f"unexpected arguments {sorted(unknown)}")
