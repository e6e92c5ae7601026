"""QA systems that hand the reader a KV cache, so the cache each answer is decoded from can be measured.

A method prepares the cache standing in for the context (the reader's chat-template prefix, the instruction, the
documents); the question and the chat-template suffix are read after it and the answer is decoded greedily by
:func:`mmcompress.models.decoding.generate_from_cache`: one decoding path for every family. Each output's extras
hold what the equal-budget benchmark reports: ``kv_entries`` (at decode start), ``context_tokens`` (the
uncompressed context), ``question_tokens``, ``new_tokens``, ``compress_s``, ``prefill_s`` (context and question),
``decode_tok_s``. ``compressed_tokens`` is kept entries + question tokens, comparable with a hard method's prompt.

- :class:`FullContextSystem` (``full``): the whole context, the uncompressed reference;
- :class:`HardCacheSystem`: a hard method's kept text prefilled, optionally under a KV press (``HARD+PRESS``);
- :class:`~mmcompress.evaluation.kvcache_systems.PressSystem` and
  :class:`~mmcompress.evaluation.soft_reader_system.SoftReaderSystem` build on :class:`CacheSystem` too.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..kvcache.base import create_press
from ..models.decoding import CachedContext, generate_from_cache, prefill
from .harness import DEFAULT_INSTRUCTION, QAExample, SystemOutput, register_system


def split_prompt(reader: Any, example: QAExample, instruction: str | None) -> tuple[list[int], list[int]]:
    """Token ids of ``(context part, question part)`` of the reader's chat prompt for ``example``."""
    return context_ids(reader, example.documents, instruction), question_ids(reader, example.question)


def context_ids(reader: Any, documents: Sequence[str], instruction: str | None) -> list[int]:
    """The chat-template prefix, the instruction and ``documents``, as the reader reads them before the question."""
    prefix, _ = reader.template_parts()
    return reader.encode(prefix + "\n\n".join(([instruction] if instruction else []) + list(documents)))


def question_ids(reader: Any, question: str) -> list[int]:
    _, suffix = reader.template_parts()
    return reader.encode("\n\n" + question + suffix)


@dataclass
class PreparedContext:
    """What a system hands the decoder: ``model`` decodes (inside ``mode()``) from ``context`` after ``question``."""

    model: Any
    context: CachedContext
    question: list[int]
    prefill_s: float
    extras: dict[str, Any] = field(default_factory=dict)
    mode: Callable[[], Any] = contextlib.nullcontext
    text: str | None = None  # the kept context as text (answer retention), None for soft and pressed caches


class CacheSystem:
    """Base: :meth:`compress` (the method's compression, None if it has none) then :meth:`read` (the cache), decoded
    by :meth:`answer`. ``family`` names the row's family in reports."""

    family = "?"
    seconds_include_prefill = False  # presses compress while the reader prefills

    def __init__(self, reader: Any, *, name: str, instruction: str | None = DEFAULT_INSTRUCTION):
        if reader is None:
            raise ConfigError(f"{name} is answered from a KV cache by the reader: it needs a reader (no --no-reader)")
        self.reader, self.name, self.instruction = reader, name, instruction

    def compress(self, example: QAExample, rate: float) -> Any:
        return None

    def read(self, example: QAExample, compressed: Any, rate: float) -> PreparedContext:
        raise NotImplementedError

    def prefill_text(self, documents: Sequence[str], question: str, press: Any = None) -> PreparedContext:
        """The reader prefills the instruction and ``documents`` (under ``press`` if given)."""
        ids = context_ids(self.reader, documents, self.instruction)
        t0 = time.perf_counter()
        context = prefill(self.reader.model, torch.tensor([ids], device=self.reader.device), press)
        return PreparedContext(self.reader.model, context, question_ids(self.reader, question),
                               time.perf_counter() - t0, text=None if press else "\n\n".join(documents))

    def answer(self, example: QAExample, rate: float) -> SystemOutput:
        t0 = time.perf_counter()
        compressed = self.compress(example, rate)
        compress_s = time.perf_counter() - t0
        p = self.read(example, compressed, rate)
        entries = p.context.cache_entries  # before the question and the answer are appended
        with p.mode():
            generation = generate_from_cache(p.model, p.context, [p.question], eos_token_id=self.reader.stop_ids(),
                                             max_new_tokens=self.reader.config.max_new_tokens, restore=False)
        text = self.reader.tokenizer.decode(generation.token_ids[0], skip_special_tokens=True).strip()
        full = len(context_ids(self.reader, example.documents, self.instruction))
        asked = len(p.question)
        seconds = compress_s + (p.prefill_s if self.seconds_include_prefill else 0.0)
        return SystemOutput(
            id=example.id, origin_tokens=full + asked, compressed_tokens=entries + asked, seconds=seconds,
            context=p.text, answer=text,
            extras={"kv_entries": entries, "context_tokens": full, "question_tokens": asked,
                    "new_tokens": generation.new_tokens, "compress_s": compress_s,
                    "prefill_s": p.prefill_s + generation.prefill_seconds,
                    "decode_tok_s": generation.decode_tokens_per_second, **p.extras})

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]:
        return [self.answer(ex, rate) for ex in examples]


class FullContextSystem(CacheSystem):
    """The whole context prefilled: the uncompressed reference (``rate`` is ignored)."""

    family = "none"

    def __init__(self, reader: Any, *, instruction: str | None = DEFAULT_INSTRUCTION):
        super().__init__(reader, name="full", instruction=instruction)

    def read(self, example: QAExample, compressed: Any, rate: float) -> PreparedContext:
        return self.prefill_text(example.documents, example.question)


@register_system("full")
def _full(reader: Any, **settings: Any) -> FullContextSystem:
    # the scorer settings every method of a command gets (--model, --device) mean nothing here; others are refused
    unknown = sorted(set(settings) - {"model", "device", "model_kwargs"})
    if unknown:
        raise ConfigError(f"full (the uncompressed context) takes no settings, got {unknown}")
    return FullContextSystem(reader)


class HardCacheSystem(CacheSystem):
    """A hard method keeps ``rate`` of the documents' tokens and the reader prefills what is left. With ``press``
    (``HARD+PRESS``) the method keeps ``sqrt(rate)`` and the press keeps ``sqrt(rate)`` of the entries prefilled."""

    family = "hard"

    def __init__(self, compressor: Any, reader: Any, *, press: str | None = None, name: str | None = None,
                 instruction: str | None = DEFAULT_INSTRUCTION):
        super().__init__(reader, name=name or (compressor.name if press is None else f"{compressor.name}+{press}"),
                         instruction=instruction)
        self.compressor, self.press = compressor, press
        if press is not None:
            self.family = "pipeline"

    def stage_rate(self, rate: float) -> float:
        return rate if self.press is None else math.sqrt(rate)

    def compress(self, example: QAExample, rate: float) -> Any:
        return self.compressor.compress(example.prompt(self.instruction), rate=self.stage_rate(rate))

    def read(self, example: QAExample, compressed: Any, rate: float) -> PreparedContext:
        kept = [s.text for s in compressed.prompt.text_segments if s.role.value in ("context", "text") and s.text]
        press = None if self.press is None else create_press(self.press, rate=self.stage_rate(rate))
        return self.prefill_text(kept, example.question, press)
