"""Add a compressor of your own: a hard method is one config dataclass and one class registered by name. It is then
used as a shipped one is (by name, with a rate or a token budget, on structured prompts, in a Pipeline before a
trained soft compressor), and mmcompress does the rest: sentence splitting, the budget across documents, the
instruction and the question kept verbatim, token accounting and the result dataclass.

This one keeps the sentences that share the most words with the question: a lexical baseline for RAG contexts.

    python examples/custom_compressor.py
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcompress import Pipeline, Prompt, create_compressor
from mmcompress.hard.base import HardCompressor, HardConfig, Request, SegmentOutcome, allocate, keep_whole, unit_outcome
from mmcompress.prompt import Policy
from mmcompress.registry import register_compressor
from mmcompress.text_units import sentence_units

WORD = re.compile(r"[a-z0-9]+")
DOCUMENTS = Path(__file__).parent / "data" / "telescope.txt"


@dataclass
class QuestionOverlapConfig(HardConfig):
    """``min_length``: shorter words do not count as overlap (the, of, who...)."""

    min_length: int = 4


@register_compressor("question_overlap")
class QuestionOverlap(HardCompressor):
    """Score each sentence by the question words it contains (earlier sentences win ties) and keep the best ones
    under the budget."""

    config_class = QuestionOverlapConfig

    def words(self, text: str) -> set[str]:
        return {w for w in WORD.findall(text.lower()) if len(w) >= self.config.min_length}

    def overlap(self, sentences: list[str], question: set[str]) -> np.ndarray:
        return np.array([len(self.words(s) & question) - 1e-3 * i for i, s in enumerate(sentences)])

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        question = self.words(request.prompt.question or "")
        units = []
        for k, segment in enumerate(request.text_segments):
            if segment.policy is Policy.KEEP:  # instruction, question, or a document marked keep
                units.append(None)
                continue
            offsets = self.tokenize_with_offsets([segment.text])[0][1]
            units.append(request.split(k, sentence_units(segment.text), offsets)[0])  # too long ones cut to fit
        scores = [None if u is None else self.overlap(u.strings(), question) for u in units]
        costs = [None if u is None else np.asarray(self.count_tokens(u.strings()), dtype=np.float64) for u in units]
        masks = allocate(request, scores, costs)  # the budget plan over all documents, as every hard method uses
        return [keep_whole(s) if u is None else unit_outcome(u, m, "sentence", sc)
                for s, u, m, sc in zip(request.text_segments, units, masks, scores)]


def main() -> None:
    documents = [p for p in DOCUMENTS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    question = "Who built the first practical reflecting telescope?"
    prompt = Prompt.from_documents(documents, instruction="Answer from the documents.", question=question)

    overlap = create_compressor("question_overlap", min_length=5)  # by name, with a config override
    result = overlap.compress(prompt, rate=0.3)
    print(f"question_overlap: {result.origin_tokens} -> {result.compressed_tokens} tokens ({result.ratio:.2f}x)")
    print(result.text, "\n")

    # the new method as the first stage of a pipeline, the shipped 4x soft QA compressor second
    pipe = Pipeline([{"compressor": "question_overlap", "rate": 0.3}, "soft-smollm2-4x-qa"])
    soft = pipe.compress(prompt)
    print(f"question_overlap 0.3 then soft-smollm2-4x-qa: {soft.ratio:.2f}x in all; "
          f"answer: {pipe.generate(soft)[0]!r}")


if __name__ == "__main__":
    main()
