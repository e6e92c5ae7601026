"""Gist and AutoCompressor as systems of the QA evaluation harness (``mmcompress eval --method runs/gist/final``).

The compressor's own (adapted) model is the reader: the documents become gists / summary vectors, the reader's chat
template, the instruction and the question stay text. The harness's ``rate`` sets the ratio for the run:
``chunk_tokens = num_slots / rate``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..prompt import Prompt
from .harness import DEFAULT_INSTRUCTION, QAExample, SystemOutput


class SoftReaderSystem:
    def __init__(self, compressor: Any, reader: Any, *, instruction: str | None = DEFAULT_INSTRUCTION):
        self.compressor, self.reader, self.instruction = compressor, reader, instruction
        self.name = compressor.name

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]:
        compressor = self.compressor
        compressor.config.chunk_tokens = max(1, round(compressor.config.num_slots / rate))
        prefix, suffix = self.reader.template_parts() if self.reader is not None else ("", "")
        prompts = [Prompt.from_documents(ex.documents, instruction=prefix + (self.instruction or ""),
                                         question=ex.question) for ex in examples]
        t0 = time.perf_counter()
        soft = compressor.compress_batch(prompts)
        seconds = (time.perf_counter() - t0) / max(1, len(examples))
        answers = compressor.generate(soft, [suffix] * len(examples),
                                      max_new_tokens=getattr(getattr(self.reader, "config", None), "max_new_tokens", None))
        return [SystemOutput(id=ex.id, origin_tokens=soft.origin_tokens[i], compressed_tokens=soft.compressed_tokens[i],
                             seconds=seconds, context=None, prompt=None, answer=answers[i].strip())
                for i, ex in enumerate(examples)]


