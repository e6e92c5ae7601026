"""Compressing retrieved documents for a query: what the LangChain and LlamaIndex adapters share.

Two ways, chosen by ``joint``:

- ``joint=False`` (default): every document is its own prompt ``[document, query]`` and all of them go through the
  method's ``compress_batch`` together (batched model work); each document keeps ``rate`` of its prompt's tokens.
- ``joint=True``: all documents form one prompt ``[instruction, documents..., query]`` under one budget, as
  LLMLingua does; methods with a document-level stage (``llmlingua``'s budget controller, ``longllmlingua``'s
  question-aware ranking and reordering) may drop whole documents and reorder the rest. Dropped documents are
  left out of the output.

Either way the query is the prompt's question (kept, and conditioned on by question-aware methods) and is not part
of the returned documents. Each output carries a record of what was kept (see :meth:`DocumentCompressor.compress`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..prompt import Prompt, Role, TextSegment
from ..results import CompressedPrompt, SegmentSelection

METADATA_KEY = "mmcompress"  # where the adapters put the record in a document's metadata


@dataclass
class CompressedDocument:
    """One output document: its position in the input, its new text, and the record of what was kept."""

    index: int
    text: str
    record: dict[str, Any]


def build_compressor(method: Any, config: dict[str, Any] | None = None):
    """A compressor from a registered name, a shipped config name, a YAML path or a compressor object."""
    from ..compressor import Compressor
    from ..factory import create_compressor

    if isinstance(method, Compressor):
        if config:
            raise ConfigError("pass config overrides with a method name, not with a compressor object")
        compressor = method
    else:
        compressor = create_compressor(method, **(config or {}))
    if getattr(compressor, "family", "") not in ("hard", "any"):
        raise ConfigError(f"{compressor.name!r} is a {compressor.family} method; documents need a hard (text) "
                          "method such as selective_context, llmlingua, longllmlingua, llmlingua2 or random")
    return compressor


class DocumentCompressor:
    """Compress the texts of retrieved documents for a query with any hard mmcompress method."""

    def __init__(self, compressor: Any, *, rate: float | None = None, target_tokens: int | None = None,
                 instruction: str | None = None, joint: bool = False):
        from ..budget import check_rate, check_target_tokens

        self.compressor = compressor
        self.rate = check_rate(rate) if rate is not None else None
        self.target_tokens = check_target_tokens(target_tokens)
        self.instruction = instruction
        self.joint = joint

    def compress(self, texts: Sequence[str], query: str | None) -> list[CompressedDocument]:
        """The compressed documents, in output order.

        ``record`` holds ``method``, ``origin_tokens`` / ``compressed_tokens`` (this document, in the scorer's
        tokenizer), ``rate``, ``unit`` and ``kept_spans``: ``[start, end)`` character spans of the original document
        text that were kept (adjacent units merged). Blank documents pass through unchanged.
        """
        texts = [str(t) for t in texts]
        live = [i for i, t in enumerate(texts) if t.strip()]
        budget = {"rate": self.rate, "target_tokens": self.target_tokens}
        query = query or None
        if not live:
            return [CompressedDocument(i, t, {"method": self.compressor.name, "kept_spans": []})
                    for i, t in enumerate(texts)]
        if self.joint:
            prompt = Prompt.from_documents([texts[i] for i in live], instruction=self.instruction, question=query)
            pieces = _pieces(_check(self.compressor.compress(prompt, **budget)), live)
        else:
            prompts = [Prompt.from_documents([texts[i]], instruction=self.instruction, question=query) for i in live]
            results = [_check(r) for r in self.compressor.compress_batch(prompts, **budget)]
            pieces = [p for r, i in zip(results, live) for p in _pieces(r, [i])]
        by_index = {i: (text, sel) for i, text, sel in pieces}
        if self.joint:  # the method's order (LongLLMLingua may reorder)
            order = [i for i, _, _ in pieces]
        else:  # input order, blank documents passed through in their place
            order = list(range(len(texts)))
        order = [i for i in order if i not in by_index or by_index[i][0].strip()]  # documents dropped: left out
        compressed = [i for i in order if i in by_index]
        counts = self._counts([texts[i] for i in compressed] + [by_index[i][0] for i in compressed])
        out = []
        for i in order:
            if i not in by_index:
                out.append(CompressedDocument(i, texts[i], {"method": self.compressor.name, "kept_spans": []}))
                continue
            text, selection = by_index[i]
            record = {"method": self.compressor.name, "unit": selection.unit, "kept_spans": kept_spans(selection)}
            if counts:
                k = compressed.index(i)
                before, after = counts[k], counts[len(compressed) + k]
                record.update(origin_tokens=before, compressed_tokens=after, rate=after / before if before else 1.0)
            out.append(CompressedDocument(i, text, record))
        return out

    def _counts(self, texts: list[str]) -> list[int]:
        count = getattr(self.compressor, "count_tokens", None)
        return count(texts) if count is not None and texts else []


def _check(result: Any) -> CompressedPrompt:
    if not isinstance(result, CompressedPrompt):
        raise ConfigError(f"expected text out of the method, got {type(result).__name__}; use a hard method")
    return result


def _pieces(result: CompressedPrompt, indices: list[int]) -> list[tuple[int, str, SegmentSelection]]:
    """``(input index, new text, selection)`` per document of ``result``, in the compressed prompt's order."""
    selection_of = {seg.meta["document"]: sel for seg, sel in zip(result.original.segments, result.selections)
                    if isinstance(seg, TextSegment) and seg.role is Role.CONTEXT and "document" in seg.meta}
    shown = [(seg.meta["document"], seg.text) for seg in result.prompt.segments
             if isinstance(seg, TextSegment) and seg.role is Role.CONTEXT and "document" in seg.meta]
    dropped = sorted(set(selection_of) - {d for d, _ in shown})
    return [(indices[d], text, selection_of[d]) for d, text in shown + [(d, "") for d in dropped]]


def kept_spans(selection: SegmentSelection) -> list[list[int]]:
    """The kept units' character spans, with touching spans merged: ``[[start, end], ...]``."""
    spans = np.asarray(selection.spans)[np.asarray(selection.kept, dtype=bool)]
    merged: list[list[int]] = []
    for start, end in spans.tolist():
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
