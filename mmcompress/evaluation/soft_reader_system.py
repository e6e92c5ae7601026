"""Soft methods (gist, autocompressor, icae, kv, ...) and ``HARD+SOFT`` pipelines as systems of the QA evaluation
harness (``mmcompress eval --method runs/icae/final``, ``--method longllmlingua+icae``).

The method compresses the QA prompt (the documents as one span; after a hard stage, one span per kept document),
then its own decoder reads the reader's chat-template prefix and the instruction, the soft spans and the method's
``task`` marker into a cache, laid out as the method's ``generate()`` lays them out
(:meth:`~mmcompress.soft.base.SoftCompressor.decoder_cache`); the question in the method's template and the chat
suffix follow, and the answer is decoded greedily (:class:`~mmcompress.evaluation.cache_systems.CacheSystem`).

The harness's ``rate`` sets the ratio: ``chunk_tokens = num_slots / rate`` (in a pipeline the hard stage keeps
``hard_rate`` and the soft stage compresses at ``rate / hard_rate``).
"""
from __future__ import annotations

import time
from typing import Any

from ..prompt import Prompt, Role
from ..results import SoftSegment
from .cache_systems import CacheSystem, PreparedContext
from .harness import DEFAULT_INSTRUCTION, QAExample


class SoftReaderSystem(CacheSystem):
    """``compressor``: a soft compressor, or a :class:`~mmcompress.Pipeline` ending in one (give ``hard_rate``, the
    rate its hard stages were built with)."""

    family = "soft"

    def __init__(self, compressor: Any, reader: Any, *, task: str = "qa", hard_rate: float | None = None,
                 name: str | None = None, instruction: str | None = DEFAULT_INSTRUCTION):
        super().__init__(reader, name=name or compressor.name, instruction=instruction)
        self.compressor, self.task, self.hard_rate = compressor, task, hard_rate
        self.stage = getattr(compressor, "soft_stage", None) or compressor
        if self.stage is not compressor:
            self.family = "pipeline"

    def soft_rate(self, rate: float) -> float:
        return rate if self.hard_rate is None else min(1.0, rate / self.hard_rate)

    def compress(self, example: QAExample, rate: float) -> list[Any]:
        config = self.stage.config
        config.chunk_tokens = max(1, round(config.num_slots / self.soft_rate(rate)))
        # alone: the documents as one span; after a hard stage: one span per kept document
        documents = example.documents if self.stage is not self.compressor else ["\n\n".join(example.documents)]
        prompt = Prompt.from_documents(documents, instruction=self.instruction, question=example.question)
        return self.compressor.compress(prompt).items[0]

    def read(self, example: QAExample, pieces: list[Any], rate: float) -> PreparedContext:
        prefix, suffix = self.reader.template_parts()
        pieces = [p.replace(text=prefix + p.text) if getattr(p, "role", None) == Role.INSTRUCTION else p for p in pieces]
        t0 = time.perf_counter()
        read = self.stage.decoder_cache(pieces, self.task)
        prefill_s = time.perf_counter() - t0
        soft_tokens = sum(p.num_tokens for p in pieces if isinstance(p, SoftSegment))
        return PreparedContext(read.model, read.context, self.reader.encode(read.tail + suffix), prefill_s,
                               {"soft_tokens": soft_tokens}, read.mode)
