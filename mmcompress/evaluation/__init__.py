"""Evaluation: metrics (EM/F1/answer retention, BLEU, token accuracy), the reader, the QA harness and its plots."""
from .harness import (
    EvalReport,
    HardCompressorSystem,
    PrecomputedSystem,
    QAExample,
    QASystem,
    RateResult,
    SystemOutput,
    evaluate,
    load_qa_file,
    register_system,
)
from .metrics import bleu4, contains_answer, exact_match, f1_score, normalize_answer, token_accuracy
from .reader import Reader, ReaderConfig
from .systems import build_system

__all__ = [
    "EvalReport",
    "HardCompressorSystem",
    "PrecomputedSystem",
    "QAExample",
    "QASystem",
    "RateResult",
    "Reader",
    "ReaderConfig",
    "SystemOutput",
    "bleu4",
    "build_system",
    "contains_answer",
    "evaluate",
    "exact_match",
    "f1_score",
    "load_qa_file",
    "normalize_answer",
    "register_system",
    "token_accuracy",
]

from . import kvcache_systems  # noqa: E402,F401  registers the KV presses as QA systems (full: cache_systems)
