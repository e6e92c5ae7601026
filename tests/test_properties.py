"""Property-based tests (hypothesis) of the budget and keep policies, over random prompts, rates, targets and segment
layouts, for every hard method on tiny models and for the visual reductions on random features:

- ``compressed_tokens <= target`` always, and the output is never empty when a token is allowed;
- segments marked keep (and instructions, questions) come out verbatim;
- kept units are the original text's, in the original order (methods that do not reorder documents);
- an impossible budget (below the kept segments, or zero tokens) is a :class:`BudgetError`, never a silent result;
- a visual reduction returns exactly ``k`` tokens per image, anchored at distinct patches in range, and a token
  standing for one patch is that patch's features verbatim.

Fast tier: a few examples per method (``MAX_EXAMPLES``), the whole file in well under a minute on one core.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mmcompress import BudgetError, Prompt, TextSegment, create_compressor
from test_hard_methods import appear_in_order

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_EXAMPLES = 8
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

WORDS = ("Paris is the capital of France . Berlin Germany river flows to sea , quick brown fox jumps over lazy dog "
         "2016 Super Bowl 50 game champion Denver Broncos ; photosynthesis converts light energy ? ! "
         "aaaaaaaaaaaaaaaaaaaa zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz").split()
REORDERING = {"llmlingua", "longllmlingua"}  # document-level ranking may reorder or drop whole documents


@pytest.fixture(scope="module")
def methods(tiny_lm):
    from test_hardening import hard_methods

    return hard_methods(tiny_lm)


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join)
segments = st.lists(st.tuples(texts, st.sampled_from(["global", "global", "keep", "own"]),
                              st.floats(0.1, 1.0)), min_size=1, max_size=4)
budgets = st.one_of(st.builds(lambda r: {"rate": r}, st.floats(0.02, 1.0)),
                    st.builds(lambda n: {"target_tokens": n}, st.integers(1, 200)))


def build_prompt(layout, question: str | None) -> Prompt:
    segs = []
    for text, policy, rate in layout:
        segs.append(TextSegment(text, role="context", keep=True if policy == "keep" else None,
                                rate=rate if policy == "own" else None))
    if question:
        segs.append(TextSegment(question, role="question"))
    return Prompt(tuple(segs))


def check_hard(compressor, name, layout, question, budget):
    prompt = build_prompt(layout, question)
    try:
        result = compressor.compress(prompt, **budget)
    except BudgetError as e:  # only for budgets that cannot be met: check that it really could not
        costs = compressor.count_tokens([s.text for s in prompt.segments])
        total = compressor.count_tokens([prompt.text])[0]
        target = budget.get("target_tokens") or int(budget["rate"] * total + 1e-9)
        fixed = sum(c for c, s in zip(costs, prompt.segments) if s.policy.value == "keep")
        own = sum(int(round(s.rate * c)) for c, s in zip(costs, prompt.segments) if s.policy.value == "own_rate")
        separators = total - sum(costs) if fixed + own else 0  # they count once a segment surely stays
        assert target < 1 or target > total or target < fixed + own + separators, (name, str(e))
        return
    target = budget.get("target_tokens") or int(budget["rate"] * result.origin_tokens + 1e-9)
    assert result.compressed_tokens <= target, (name, result.compressed_tokens, target)
    assert result.text.strip(), name  # a target of at least one token never gives an empty prompt
    out = [s.text for s in result.prompt.segments]
    for seg in prompt.segments:
        if seg.policy.value == "keep":
            assert seg.text in out, (name, seg.text)  # verbatim
    if name in REORDERING:
        return
    for seg, sel, new in zip(prompt.segments, result.selections, _outputs(prompt, result)):
        pieces = [seg.text[s:e] for s, e in sel.spans[sel.kept]]
        assert appear_in_order(pieces, new), (name, pieces, new)
        assert "".join(pieces).replace(" ", "") == new.replace(" ", ""), name  # only kept units, verbatim


def _outputs(prompt, result) -> list[str]:
    """The output text of every original segment ('' when all its units were dropped)."""
    out, k = [], 0
    new = list(result.prompt.segments)
    for seg, sel in zip(prompt.segments, result.selections):
        if sel.kept.any() and k < len(new):
            out.append(new[k].text)
            k += 1
        else:
            out.append("")
    return out


@pytest.mark.parametrize("name", ["random", "random-sentence", "truncate", "selective_context", "llmlingua",
                                  "longllmlingua", "llmlingua2"])
@SETTINGS
@given(layout=segments, question=st.sampled_from([None, "Which city is the capital of France?"]), budget=budgets)
def test_hard_method_budget_and_keep_policies(methods, name, layout, question, budget):
    if name == "longllmlingua":
        question = question or "Which city?"  # question-aware: needs one
    assume(any(p != "keep" for _, p, _ in layout))
    check_hard(methods[name], name, layout, question, budget)


# ------------------------------------------------------------------------------------------ visual reductions
REDUCTIONS = ["visionzip", "prumerge", "tome", "vision_pool", "vision_random", "vision_strided"]


def random_features(seed: int, batch: int, side: int, dim: int):
    from mmcompress.vision.encoders.base import EncoderOutput

    g = torch.Generator().manual_seed(seed)
    n, heads = side * side, 2
    attn = torch.softmax(torch.randn(batch, heads, n + 1, n + 1, generator=g), -1)
    return EncoderOutput(patch_tokens=torch.randn(batch, n, dim, generator=g), cls_token=torch.randn(batch, dim, generator=g),
                         attentions=attn, keys=torch.randn(batch, n + 1, dim, generator=g), grid=(side, side),
                         num_prefix_tokens=1)


@pytest.mark.parametrize("name", REDUCTIONS)
@SETTINGS
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), side=st.integers(2, 6), data=st.data())
def test_visual_reduction_keeps_exactly_k_patches(name, seed, batch, side, data):
    features = random_features(seed, batch, side, dim=8)
    n = side * side
    k = data.draw(st.integers(1, n), label="k")
    reduction = create_compressor(name, tokens=k)
    result = reduction.reduce(features, k)
    assert result.tokens.shape == (batch, k, 8) and torch.isfinite(result.tokens).all()
    idx = result.indices
    # -1: a token at no patch (VisionZip's CLS token, PruMerge's extra token: at most one per row, as officially)
    assert idx.shape == (batch, k) and int(idx.min()) >= -1 and int(idx.max()) < n
    anchored = [[i for i in row.tolist() if i >= 0] for row in idx]
    assert all(len(set(row)) == len(row) >= k - 1 for row in anchored)  # distinct anchors
    sizes = result.sizes
    # (PruMerge's neighbourhoods overlap, as in its official code, so only each size is bounded by the patch count;
    # only VisionZip's CLS token, at no patch, has size 0)
    assert sizes.shape == (batch, k) and bool((sizes <= n).all())
    assert bool(((sizes >= 1) | ((sizes == 0) & (idx == -1))).all())
    single = sizes == 1
    if single.all():  # pure selection: each token is its patch, verbatim
        gathered = features.patch_tokens.gather(1, idx[..., None].expand(-1, -1, 8))
        torch.testing.assert_close(result.tokens, gathered)
    with pytest.raises(BudgetError):
        reduction.reduce(features, n + 1)  # more tokens than patches is an error, never a silent clamp


def test_property_file_is_fast_enough_to_stay_in_the_fast_tier():
    assert MAX_EXAMPLES <= 10  # raise it locally (e.g. 200) to hunt for counter-examples
