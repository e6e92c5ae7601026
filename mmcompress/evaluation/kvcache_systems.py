"""KV presses as systems of the QA evaluation harness: the reader prefills the context (chat-template prefix,
instruction, documents) under the press, then reads the question and answers from the pressed cache.

``rate`` is the fraction of the context's KV entries kept; the question and answer are never pressed. The reported
compressed size is kept entries + question tokens, comparable with a hard method's compressed prompt.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..kvcache.base import create_press, list_presses
from ..models.decoding import prefill
from .harness import DEFAULT_INSTRUCTION, QAExample, SystemOutput, register_system


def split_prompt(reader: Any, example: QAExample, instruction: str | None) -> tuple[list[int], list[int]]:
    """Token ids of ``(context part, question part)`` of the reader's chat prompt for ``example``."""
    prefix, suffix = reader.template_parts()
    head = "\n\n".join(([instruction] if instruction else []) + list(example.documents))
    return reader.encode(prefix + head), reader.encode("\n\n" + example.question + suffix)


class PressSystem:
    """A KV press + the reader, for :func:`mmcompress.evaluation.harness.evaluate`."""

    def __init__(self, press_name: str, reader: Any, *, instruction: str | None = DEFAULT_INSTRUCTION, **settings: Any):
        self.press_name, self.reader, self.instruction, self.settings = press_name, reader, instruction, settings
        self.name = press_name

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]:
        press = create_press(self.press_name, rate=rate, **self.settings)
        outputs = []
        for ex in examples:
            context_ids, question_ids = split_prompt(self.reader, ex, self.instruction)
            t0 = time.perf_counter()
            context = prefill(self.reader.model, torch.tensor([context_ids], device=self.reader.device), press)
            seconds = time.perf_counter() - t0
            entries = context.cache_entries  # decoding appends to the cache
            answer = self.reader.generate(input_ids=torch.tensor([question_ids], device=self.reader.device),
                                          cache=context.cache, position_offset=len(context_ids))[0]
            outputs.append(SystemOutput(
                id=ex.id, origin_tokens=len(context_ids) + len(question_ids),
                compressed_tokens=entries + len(question_ids), seconds=seconds, context=None,
                prompt=None, answer=answer, extras={"kv_entries": entries}))
        return outputs


def _register(name: str) -> None:
    @register_system(name)
    def build(reader: Any, **settings: Any) -> PressSystem:
        return PressSystem(name, reader, **settings)


for _name in list_presses():
    _register(_name)
