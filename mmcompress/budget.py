"""Selection under a budget: the one piece of logic every hard method shares, for text and visual tokens alike.

A hard method scores *units* (tokens, words, phrases, sentences, documents, visual patches); this module decides
which units to keep so that the kept cost fits a rate or a token budget, forced units always survive, and the
original order is preserved (selections are masks or sorted indices, never reorderings).

- :func:`plan_budget` turns a prompt-wide ``rate`` / ``target_tokens`` plus per-segment policies (keep, own rate,
  global) into token targets, and raises :class:`~mmcompress.errors.BudgetError` when they cannot be met.
- :func:`select_under_budget` keeps the best-scoring units whose costs fit a budget (text units, variable cost).
- :func:`topk_indices` keeps exactly ``k`` units per row of a batch (visual tokens, unit cost), in order.
- :func:`percentile_mask` is the reference Selective Context rule (drop units below a percentile).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError
from .prompt import Policy


def check_rate(rate: float | None, what: str = "rate") -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 < float(rate) <= 1.0):
        raise BudgetError(f"{what} must be a number in (0, 1] (the fraction of tokens kept), got {rate!r}")
    return float(rate)


def check_target_tokens(target_tokens: int | None) -> int | None:
    if target_tokens is None:
        return None
    if isinstance(target_tokens, bool) or not isinstance(target_tokens, (int, np.integer)) or target_tokens < 1:
        raise BudgetError(f"target_tokens must be a positive integer, got {target_tokens!r}")
    return int(target_tokens)


@dataclass(frozen=True)
class BudgetPlan:
    """Token targets for one prompt.

    ``segment_targets[i]`` is the kept-token target of segment ``i`` when it has a fixed target (kept segments: their
    full cost; own-rate segments: ``rate * cost``); ``None`` marks segments that share ``pooled_target``.
    """

    total_tokens: int
    target_tokens: int
    segment_targets: tuple[int | None, ...]
    pooled_target: int

    @property
    def pooled_segments(self) -> list[int]:
        return [i for i, t in enumerate(self.segment_targets) if t is None]


def plan_budget(
    costs: Sequence[int],
    policies: Sequence[Policy],
    segment_rates: Sequence[float | None],
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    overhead: int = 0,
) -> BudgetPlan:
    """Split a prompt-wide budget over segments.

    The budget covers the whole prompt, as in LLMLingua: kept segments (instructions, questions, anything marked
    keep) and own-rate segments take their share first, and the global-rate segments share what is left.
    ``overhead``: tokens the rendered prompt takes beyond its segments' own (the separators between them); they
    are counted in the prompt's size and taken from the budget like a kept segment.
    """
    rate, target_tokens = check_rate(rate), check_target_tokens(target_tokens)
    if rate is not None and target_tokens is not None:
        raise BudgetError("give either rate or target_tokens, not both")
    if rate is None and target_tokens is None:
        raise BudgetError("give a rate in (0, 1] or a target token count")
    overhead = max(0, int(overhead))
    total = int(sum(costs)) + overhead
    if total == overhead:
        raise BudgetError("the prompt has no tokens to compress")
    if target_tokens is not None and target_tokens > total:
        raise BudgetError(f"target_tokens={target_tokens} is larger than the prompt ({total} tokens); nothing to do")
    # rounded down, so that the kept fraction never exceeds the rate
    target = target_tokens if target_tokens is not None else int(math.floor(rate * total + 1e-9))
    if target < 1:
        raise BudgetError(f"rate={rate} keeps 0 of the prompt's {total} tokens; keep at least one token "
                          f"(rate >= {1 / total:.3g}) or give target_tokens")
    fixed: list[int | None] = []
    for cost, policy, seg_rate in zip(costs, policies, segment_rates):
        if policy is Policy.KEEP:
            fixed.append(int(cost))
        elif policy is Policy.OWN_RATE:
            fixed.append(int(round(float(seg_rate) * cost)))
        else:
            fixed.append(None)
    fixed_segments = sum(t for t in fixed if t is not None)
    # separators survive with the segments around them: certain only when some segment is kept or has its own rate
    fixed_total = fixed_segments + (overhead if fixed_segments else 0)
    pooled_cost = sum(c for c, t in zip(costs, fixed) if t is None)
    if target < fixed_total:
        asked = f"target_tokens={target_tokens}" if target_tokens is not None else f"rate={rate} ({target} tokens)"
        separators = f", {overhead} of them separators between segments" if overhead else ""
        raise BudgetError(
            f"{asked} is below what the kept and own-rate segments take ({fixed_total} of {total} tokens{separators}); "
            "raise the budget or mark fewer segments keep"
        )
    pooled = target - fixed_segments - overhead
    if pooled < 1 and target - fixed_segments >= 1:
        pooled = 1  # one unit of one segment needs no separator: a token allowed is a token kept
    pooled = max(0, min(pooled_cost, pooled))
    return BudgetPlan(total, target, tuple(fixed), pooled)


def select_under_budget(
    scores: np.ndarray, costs: np.ndarray, budget: float, force: np.ndarray | None = None
) -> np.ndarray:
    """Keep the highest-scoring units whose total cost fits ``budget``; forced units first, order preserved.

    Units are taken best first; a unit that does not fit is skipped and smaller ones after it may still fit, so the
    kept cost lands as close under the budget as the unit sizes allow, never over it (a unit larger than the whole
    budget is never kept: split it first, :func:`~mmcompress.text_units.split_units`). NaN scores rank last. Ties keep
    the earlier unit. Returns a boolean mask.
    """
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    keep = np.zeros(len(scores), dtype=bool) if force is None else np.asarray(force, dtype=bool).copy()
    used = float(costs[keep].sum())
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(scores)), -ranked))  # best first, earlier first among ties
    for i in order:
        if not keep[i] and used + costs[i] <= budget + 1e-9:
            keep[i] = True
            used += costs[i]
    return keep


def percentile_mask(scores: np.ndarray, drop_fraction: float, force: np.ndarray | None = None) -> np.ndarray:
    """Reference Selective Context rule: drop units whose score is below the ``drop_fraction`` percentile."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=bool)
    threshold = np.nanpercentile(scores, drop_fraction * 100) if np.isfinite(scores).any() else -np.inf
    keep = ~(scores < threshold)
    if force is not None:
        keep |= np.asarray(force, dtype=bool)
    return keep


def topk_indices(scores, k: int, force=None):
    """Indices of the ``k`` best units per row, sorted ascending (original order): ``(b, n) -> (b, k)``.

    ``force`` (bool ``(b, n)`` or ``(n,)``) marks units kept before the rest; at most ``k`` forced units are allowed.
    """
    import torch

    scores = torch.as_tensor(scores)
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise BudgetError(f"cannot keep {k} of {n} units; k must be between 1 and {n}")
    ranked = scores.float().nan_to_num(nan=float("-inf"))
    if force is not None:
        force = torch.as_tensor(force, dtype=torch.bool, device=scores.device).expand_as(scores)
        if int(force.sum(-1).max()) > k:
            raise BudgetError(f"{int(force.sum(-1).max())} units are forced but only {k} may be kept")
        ranked = ranked.masked_fill(force, float("inf"))
    return ranked.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


def rank_within_segment(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The budget check's ranks for one segment: each kept token's ITPC score replaced by its rank among the
    segment's kept scored tokens, in (0, 1]. Raw scores are not comparable across documents: LongLLMLingua keeps more
    of the documents it ranks first (a lower threshold there), so trimming by raw score took the top documents' tokens
    first. Ranks trim every document by about the same share, lowest scores first (docs/evaluation.md: on 20
    multi-document rows the trim's cost went from 5 answers to 4); unscored tokens (inf) stay last."""
    ranks = np.array(values, dtype=np.float64)
    scored = np.flatnonzero(kept & np.isfinite(ranks))
    if len(scored):
        order = np.argsort(ranks[scored], kind="stable")
        ranks[scored[order]] = np.arange(1, len(scored) + 1) / len(scored)
    return ranks
