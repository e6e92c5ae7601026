"""Answer and reconstruction metrics (numbers in [0, 1]).

QA metrics follow the SQuAD evaluation script: answers are normalised (lowercase, no punctuation, no articles,
single spaces) and scored against every gold answer, keeping the best. BLEU-4 comes from sacrebleu when installed.
"""
from __future__ import annotations

import math

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize_answer(gold).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        same = sum(common.values())
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(text: str, golds: Sequence[str]) -> float:
    """1.0 if any normalised gold answer appears in the normalised text (answer retention / accuracy)."""
    norm = f" {normalize_answer(text)} "
    return float(any(f" {normalize_answer(g)} " in norm for g in golds if normalize_answer(g)))


def token_accuracy(predicted_ids: Sequence[int], reference_ids: Sequence[int]) -> float:
    """Fraction of reference positions whose token is reproduced at the same position."""
    if not reference_ids:
        return 1.0 if not predicted_ids else 0.0
    same = sum(1 for p, r in zip(predicted_ids, reference_ids) if p == r)
    return same / len(reference_ids)


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1] (sacrebleu, 13a tokenisation)."""
    from ..extras import require

    sacrebleu = require("sacrebleu", "BLEU")
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0


def mcnemar_exact(won: int, lost: int) -> float:
    """Exact two-sided McNemar (sign) test p-value for paired binary outcomes: ``won`` rows where only A succeeds,
    ``lost`` where only B does (ties carry no information)."""
    won, lost = int(won), int(lost)
    n, k = won + lost, min(won, lost)
    return min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n) if n else 1.0


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default): unlike the normal approximation it stays in
    [0, 1] and is not empty at 0 or n successes."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
