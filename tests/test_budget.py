"""Budget planning and selection, shared by every hard method and by visual-token reduction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress import BudgetError, Policy, plan_budget, select_under_budget, topk_indices
from mmcompress.budget import percentile_mask

G, O, K = Policy.GLOBAL, Policy.OWN_RATE, Policy.KEEP


def test_rate_covers_the_whole_prompt_and_kept_segments_take_their_share():
    plan = plan_budget([10, 100, 50, 40], [K, G, O, K], [None, None, 0.5, None], rate=0.5)
    assert plan.total_tokens == 200 and plan.target_tokens == 100
    assert plan.segment_targets == (10, None, 25, 40)
    assert plan.pooled_target == 100 - 10 - 25 - 40


def test_target_tokens_and_errors():
    assert plan_budget([30, 70], [K, G], [None, None], target_tokens=50).pooled_target == 20
    with pytest.raises(BudgetError, match="larger than the prompt"):
        plan_budget([30, 70], [K, G], [None, None], target_tokens=101)
    with pytest.raises(BudgetError, match="below what the kept"):
        plan_budget([30, 70], [K, G], [None, None], target_tokens=20)
    with pytest.raises(BudgetError, match="below what the kept"):
        plan_budget([60, 40], [K, G], [None, None], rate=0.5)
    with pytest.raises(BudgetError, match="either rate or target_tokens"):
        plan_budget([10], [G], [None], rate=0.5, target_tokens=5)


@pytest.mark.parametrize("rate", [0, -0.1, 1.01, "0.5", True, float("nan")])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(BudgetError, match="rate must be"):
        plan_budget([10], [G], [None], rate=rate)


def test_selection_fits_budget_keeps_forced_and_order():
    scores = np.array([5.0, 1.0, 4.0, 3.0, 2.0])
    costs = np.array([2, 1, 2, 1, 1])
    keep = select_under_budget(scores, costs, budget=4)
    assert keep.tolist() == [True, False, True, False, False]
    forced = select_under_budget(scores, costs, budget=4, force=np.array([0, 1, 0, 0, 0], bool))
    assert forced[1] and costs[forced].sum() <= 4


def test_selection_skips_a_big_unit_for_smaller_ones_and_never_exceeds_the_budget():
    keep = select_under_budget(np.array([9.0, 8.0, 7.0]), np.array([5, 2, 2]), budget=4)
    assert keep.tolist() == [False, True, True]
    # one unit bigger than the budget is never kept whole (main kept it, 46 tokens for a budget of 23): methods
    # split such units first (text_units.split_units), see test_unit_larger_than_the_budget_is_cut
    assert select_under_budget(np.array([1.0]), np.array([46]), budget=23).tolist() == [False]


def test_split_units_cuts_only_units_longer_than_the_budget():
    from mmcompress.text_units import Units, split_units

    text = "short " + "x " * 30 + "end"
    units = Units(text, np.array([[0, 5], [6, 6 + 59], [66, 69]]))
    offsets = np.array([[0, 5]] + [[6 + 2 * i, 7 + 2 * i] for i in range(30)] + [[66, 69]])
    pieces, parent = split_units(units, offsets, max_tokens=8)
    assert parent.tolist() == [0] + [1] * 5 + [2]  # 30 one-token words in pieces of 7 tokens
    assert pieces.strings()[0] == "short" and pieces.strings()[-1] == "end"
    assert "".join(pieces.strings()[1:-1]).replace(" ", "") == "x" * 30 and all(len(p.split()) <= 7 for p in pieces.strings())
    same, parent = split_units(units, offsets, max_tokens=40)
    assert same is units and parent.tolist() == [0, 1, 2]


def test_rate_that_keeps_no_token_is_an_error_and_rates_round_down():
    with pytest.raises(BudgetError, match="keeps 0 of the prompt's 17 tokens"):
        plan_budget([17], [G], [None], rate=1e-9)
    assert plan_budget([697], [G], [None], rate=0.1).target_tokens == 69  # 69.7: never above the rate


def test_nan_scores_rank_last():
    keep = select_under_budget(np.array([np.nan, 1.0, 2.0]), np.ones(3), budget=2)
    assert keep.tolist() == [False, True, True]


def test_percentile_rule_of_the_reference():
    keep = percentile_mask(np.arange(10.0), 0.3)
    assert keep.sum() == 7 and not keep[:3].any()


def test_topk_indices_batched_exact_sorted_and_forced():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.8, 0.1, 0.2, 0.3]])
    idx = topk_indices(scores, 2)
    assert idx.tolist() == [[1, 3], [0, 3]]
    forced = topk_indices(scores, 2, force=torch.tensor([True, False, False, False]))
    assert forced.tolist() == [[0, 1], [0, 3]]
    with pytest.raises(BudgetError, match="between 1 and 4"):
        topk_indices(scores, 5)


def test_separators_between_segments_are_counted_like_a_kept_segment():
    # main planned on the segments alone, so "\n\n" between them pushed the rendered prompt over the target
    plan = plan_budget([10, 100, 10], [K, G, K], [None, None, None], rate=0.5, overhead=4)
    assert plan.total_tokens == 124 and plan.target_tokens == 62 and plan.pooled_target == 62 - 10 - 10 - 4
    with pytest.raises(BudgetError, match="4 of them separators"):
        plan_budget([10, 100, 10], [K, G, K], [None, None, None], target_tokens=23, overhead=4)


def test_llmlingua_budget_ranks_are_per_segment_so_a_trim_takes_every_document_alike():
    """LongLLMLingua keeps more of the documents it ranks first, so their kept tokens carry lower raw scores; the
    budget check's ranks are within each segment, so trimming the lowest ranks takes about the same share of every
    document instead of the top one's tokens first. Unscored (inf) tokens rank last, dropped tokens are untouched."""
    from mmcompress.budget import rank_within_segment

    top_doc = np.array([0.1, 0.2, 0.3, 0.4, np.inf, 5.0])  # generous: low scores kept
    other = np.array([5.0, 6.0, 7.0, 8.0, 0.5, 9.0])       # strict: only high scores kept
    keep_top, keep_other = np.array([1, 1, 1, 1, 1, 0], bool), np.array([1, 1, 1, 1, 0, 0], bool)
    r_top, r_other = rank_within_segment(top_doc, keep_top), rank_within_segment(other, keep_other)
    assert r_top[:4].tolist() == [0.25, 0.5, 0.75, 1.0] and r_other[:4].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert np.isinf(r_top[4]) and r_top[5] == 5.0 and r_other[4] == 0.5
    # the two lowest ranks overall: one token of each document (by raw score both would come from top_doc)
    ranked = sorted([(r, "top") for r in r_top[keep_top]] + [(r, "other") for r in r_other[keep_other]])
    assert {name for _, name in ranked[:2]} == {"top", "other"}
