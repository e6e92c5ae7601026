"""Evaluation: metrics (EM/F1/answer retention, BLEU, token accuracy), harnesses and plots."""
from .metrics import bleu4, contains_answer, exact_match, f1_score, normalize_answer, token_accuracy

__all__ = ["bleu4", "contains_answer", "exact_match", "f1_score", "normalize_answer", "token_accuracy"]
