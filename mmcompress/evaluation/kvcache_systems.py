"""KV presses as systems of the QA evaluation harness: the reader prefills the context (chat-template prefix,
instruction, documents) under the press, then reads the question and answers from the pressed cache.

``rate`` is the fraction of the context's KV entries kept; the question and answer are never pressed. The reported
compressed size is kept entries + question tokens, comparable with a hard method's compressed prompt.
"""
from __future__ import annotations

from typing import Any

from ..kvcache.base import create_press, list_presses
from .cache_systems import CacheSystem, PreparedContext, split_prompt
from .harness import DEFAULT_INSTRUCTION, QAExample, register_system

__all__ = ["PressSystem", "split_prompt"]


class PressSystem(CacheSystem):
    """A KV press + the reader, for :func:`mmcompress.evaluation.harness.evaluate`."""

    family = "attention"
    seconds_include_prefill = True  # the press works while the context is prefilled

    def __init__(self, press_name: str, reader: Any, *, instruction: str | None = DEFAULT_INSTRUCTION, **settings: Any):
        super().__init__(reader, name=press_name, instruction=instruction)
        self.press_name, self.settings = press_name, settings

    def read(self, example: QAExample, compressed: Any, rate: float) -> PreparedContext:
        return self.prefill_text(example.documents, example.question, create_press(self.press_name, rate=rate,
                                                                                   **self.settings))


def _register(name: str) -> None:
    @register_system(name)
    def build(reader: Any, **settings: Any) -> PressSystem:
        return PressSystem(name, reader, **settings)


for _name in list_presses():
    _register(_name)
