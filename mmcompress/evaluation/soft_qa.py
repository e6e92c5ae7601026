"""A small QA evaluation for soft compressors and pipelines (until the shared QA harness covers them).

Each SQuAD-style row ``{context, question, answers}``: the context is compressed (the question stays text), the
frozen decoder answers from the soft prompt, and the answer is scored with exact match, F1 and answer containment
against the gold answers. ``full_context=True`` instead answers from the whole context as text through the same
decoder (the uncompressed reference); ``no_context=True`` from the question alone.

    from mmcompress.evaluation.soft_qa import evaluate_soft_qa
    evaluate_soft_qa(create_compressor("runs/icae-qa/final"), rows[:100])
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .metrics import contains_answer, exact_match, f1_score


@dataclass
class QAReport:
    method: str
    setting: str  # "compressed", "full_context" or "no_context"
    questions: int
    exact_match: float
    f1: float
    contains: float
    ratio: float | None = None
    answers: list[str] = field(default_factory=list)
    contains_per_row: list[bool] = field(default_factory=list)  # for paired comparisons between settings


def _golds(row: dict[str, Any]) -> list[str]:
    answers = row.get("answers") or []
    return [a if isinstance(a, str) else a.get("text", "") for a in answers]


def evaluate_soft_qa(compressor: Any, rows: Sequence[dict[str, Any]], *, batch_size: int = 8, max_new_tokens: int = 16,
                     setting: str = "compressed") -> QAReport:
    """Answer every row's question from its compressed context (or ``setting="full_context"`` / ``"no_context"``)."""
    from ..prompt import Prompt, Role, TextSegment

    if setting not in ("compressed", "full_context", "no_context"):
        raise ValueError(f"setting must be compressed, full_context or no_context, got {setting!r}")
    answers, origin, compressed = [], 0, 0
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        if setting == "compressed":
            prompts = [Prompt.from_documents([r["context"]], question=r["question"]) for r in part]
        else:
            # the context kept as text: the decoder reads it verbatim (no soft span)
            prompts = [Prompt((*(() if setting == "no_context" else
                                 (TextSegment(r["context"], role=Role.CONTEXT, keep=True),)),
                               TextSegment(r["question"], role=Role.QUESTION))) for r in part]
        soft = compressor.compress_batch(prompts)
        answers += [a.strip() for a in compressor.generate(soft, task="qa", max_new_tokens=max_new_tokens)]
        origin += soft.origin_total
        compressed += soft.compressed_total
    golds = [_golds(r) for r in rows]
    n = max(1, len(rows))
    hits = [bool(contains_answer(a, g)) for a, g in zip(answers, golds)]
    return QAReport(method=getattr(compressor, "name", "?"), setting=setting, questions=len(rows),
                    exact_match=sum(exact_match(a, g) for a, g in zip(answers, golds)) / n,
                    f1=sum(f1_score(a, g) for a, g in zip(answers, golds)) / n,
                    contains=sum(hits) / n, ratio=origin / compressed if compressed else None, answers=answers,
                    contains_per_row=hits)
