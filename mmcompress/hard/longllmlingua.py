"""LongLLMLingua (Jiang et al., ACL 2024, arXiv 2310.06839; reference code microsoft/LLMLingua, llmlingua 0.2.2).

LLMLingua made question-aware, for long multi-document contexts (RAG):

- **question-aware coarse ranking**: a document's score is the perplexity of the question given the document
  (``rank_condition="after"``), so the documents that make the question predictable come first;
- **reordering** of the kept documents (``reorder="sort"``: best first; ``"two_stage"``: best at both ends, against
  "lost in the middle"; ``"original"``);
- **dynamic compression ratio**: better-ranked documents keep more tokens (``dynamic_ratio``: +d for the best down
  to -d for the worst, added to the base keep-rate);
- **contrastive perplexity** (``condition_compare``): a token is kept for how much the question makes it more
  predictable, ``nll(x | context) - nll(x | question, context)``;
- **forced documents** (``force_context_ids``) and a cap on their number (``force_context_number``);
- :func:`recover`: map spans of an LLM's answer that were copied from the compressed prompt back to the original
  text (compression can cut words: "Fuel Dilution" -> "uedil").

The defaults are the settings the LongLLMLingua authors recommend (README, FlashRAG, LangChain):
``rank_condition="after"`` with the question prefixed in the token-level step (``"after_condition"``),
``reorder="sort"``, ``dynamic_ratio=0.3``, ``condition_compare=True``, ``context_budget="+100"``. Everything else,
and the reference-parity options, come from :mod:`mmcompress.hard.llmlingua`.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..registry import register_compressor
from ..results import CompressedPrompt
from .llmlingua import LLMLingua, LLMLinguaConfig


@dataclass
class LongLLMLinguaConfig(LLMLinguaConfig):
    rank_condition: str = "after"
    condition_tokens: bool = True
    condition_compare: bool = True
    reorder: str = "sort"
    dynamic_ratio: float = 0.3
    first_pass: str = "window"  # the question-conditioned ranking scores no document token on its own


@register_compressor("longllmlingua")
class LongLLMLingua(LLMLingua):
    """Question-aware LLMLingua: needs a question (``question=...`` or a question segment)."""

    config_class = LongLLMLinguaConfig

    def recover(self, original: str | CompressedPrompt, compressed: str | None = None, response: str = "") -> str:
        """Replace the parts of ``response`` copied from the compressed prompt with the original text they came from.

        ``recover(result, response=answer)`` takes both prompts from a :class:`CompressedPrompt`.
        """
        if isinstance(original, CompressedPrompt):
            original, compressed = original.original.text, original.text
        if compressed is None:
            raise TypeError("recover needs the compressed prompt (or a CompressedPrompt as the first argument)")
        return recover(original, compressed, response, self.tokenizer)


def recover(original: str, compressed: str, response: str, tokenizer: Any, max_gap: int = 10) -> str:
    """Map spans of ``response`` that appear in ``compressed`` back to the original text (llmlingua's ``recover``).

    The response is split on spaces; each longest run of words found verbatim in the compressed prompt is located
    in the original's tokens: the start token with the most of the run's tokens following it in order (each within
    ``max_gap`` tokens of the previous), the shortest such span on ties, and the span is decoded from the original.
    """
    original_ids = tokenizer(original, add_special_tokens=False)["input_ids"]
    positions: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(original_ids):
        positions[t].append(i)

    def locate(words: str) -> str:
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        if not ids:
            return words
        best, best_count, best_len = None, 1, float("inf")
        for first in positions.get(ids[0], []):
            last, count = first, 1
            for t in ids[1:]:
                cands = positions.get(t, [])
                j = bisect.bisect_right(cands, last)
                if j >= len(cands) or cands[j] - last > max_gap:
                    continue
                count += 1
                last = cands[j]
            length = last - first + 1
            if count > best_count or (count == best_count and length < best_len):
                best, best_count, best_len = (first, last + 1), count, length
        return words if best is None else tokenizer.decode(original_ids[best[0] : best[1]])

    words = response.split(" ")
    out, i = [], 0
    while i < len(words):
        if words[i] not in compressed:
            out.append(words[i])
            i += 1
            continue
        j = i
        while j + 1 < len(words) and " ".join(words[i : j + 2]) in compressed:
            j += 1
        out.append(locate(" ".join(words[i : j + 1])))
        i = j + 1
    return " ".join(out)
