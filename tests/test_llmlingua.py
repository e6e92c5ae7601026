"""LLMLingua and LongLLMLingua: the mechanics on a tiny random Llama (window 128), then parity and a real-model tier."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcompress import BudgetError, ConfigError, InvalidPromptError, Prompt, TextSegment, create_compressor
from mmcompress.hard.longllmlingua import recover
from mmcompress.scoring import CausalLMScorer
from mmcompress.scoring.iterative import IterativeCompressor, rate_threshold, window_plan
from mmcompress.scoring.ranking import rank_by_perplexity

DOCS = [
    "Paris is the capital and most populous city of France. The river flows to the sea. Berlin is the capital of "
    "Germany. The quick brown fox jumps over the lazy dog.",
    "Super Bowl 50 was an American football game to determine the champion of the National Football League for the "
    "2015 season. The game was played on February 7, 2016.",
    "Photosynthesis converts light energy into chemical energy that can later be released to fuel the organism.",
    "Neural networks learn representations from data; transformers use attention over tokens. A journey of a "
    "thousand miles begins with a single step.",
]
QUESTION = "What is the capital of France?"


def make(name, tiny_lm, **kw):
    model, tokenizer = tiny_lm
    kw.setdefault("iterative_size", 24)
    return create_compressor(name, model=model, tokenizer=tokenizer, **kw)


def own_nll(model, ids):
    """NLL of ids[1:] given everything before, by one plain forward pass."""
    with torch.inference_mode():
        logits = model(torch.as_tensor(ids)[None]).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(ids[1:]), reduction="none").numpy()


# ------------------------------------------------------------------------------------------------ shared pieces
def test_window_plan_follows_the_reference_split():
    plan = window_plan([30, 150, 40], [0.5, 0.6, 1.7], 100)
    # the first window starts at offset 1 (99 tokens), a window spanning two pieces gets one sub-window per piece
    assert plan == [[(30, 0.5), (69, 0.6)], [(81, 0.6), (19, 1.0)], [(21, 1.0)]]
    long = window_plan([450], [0.3], 100)
    assert [sum(d for d, _ in w) for w in long] == [99, 100, 100, 100, 51]


def test_rate_threshold_keeps_about_the_rate():
    values = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    for rate in (0.2, 0.5, 0.9):
        assert abs((values > rate_threshold(values, rate)).mean() - rate) < 0.01
    assert rate_threshold(values, 1.0) == float("-inf")
    assert rate_threshold(np.array([np.nan, 1.0, 2.0], np.float32), 0.5) == 2.0  # NaN (unscored) is ignored


def test_ranking_is_batched_and_question_aware(tiny_lm):
    model, tokenizer = tiny_lm
    scorer = CausalLMScorer(model, tokenizer)
    plain = rank_by_perplexity(scorer, DOCS, condition="none")
    # "none": each document's own mean NLL, highest first
    for i, doc in enumerate(DOCS):
        ids = tokenizer(doc)["input_ids"]
        assert plain.scores[i] == pytest.approx(own_nll(model, ids).mean(), abs=1e-4)
    assert list(plain.order) == list(np.argsort(-plain.scores, kind="stable"))
    after = rank_by_perplexity(scorer, DOCS, QUESTION, condition="after")
    # "after": the NLL of the question tokens given the document, lowest first
    query = QUESTION + " We can get the answer to this question in the given documents."
    ids = tokenizer(DOCS[2] + query)["input_ids"]
    n_doc = len(tokenizer(DOCS[2])["input_ids"])
    assert after.scores[2] == pytest.approx(own_nll(model, ids)[n_doc - 1 :].mean(), abs=1e-4)
    assert list(after.order) == list(np.argsort(after.scores, kind="stable"))
    # the LM head only runs on the tokens the condition averages: the document's own tokens are context (NaN)
    assert np.isnan(after.token_losses[2][:n_doc]).all() and not np.isnan(after.token_losses[2][n_doc:]).any()


# ------------------------------------------------------------------------------------------------ ITPC
def _ids(tokenizer, text):
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)


@pytest.mark.parametrize("first_pass", ["window", "full"])
def test_window_scores_are_conditioned_on_kept_tokens(tiny_lm, first_pass):
    model, tokenizer = tiny_lm
    ids = _ids(tokenizer, " ".join(DOCS))
    runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=24, first_pass=first_pass,
                                 alignment="token")
    result = runner.run(ids, 0, window_plan([len(ids) + 2], [0.5], 24))
    kept = np.flatnonzero(result.kept)
    assert 0.3 < result.kept.mean() < 0.9 and len(result.windows) >= 3
    # a kept token of a finished window was re-scored given exactly the kept tokens before it
    last_window_start = result.windows[-1][0]
    check = [p for p in kept[1:] if p < last_window_start]
    fresh = own_nll(model, ids[kept])
    rank = {p: i for i, p in enumerate(kept)}
    np.testing.assert_allclose([result.values[p] for p in check], [fresh[rank[p] - 1] for p in check], atol=2e-4)
    # ... which differs from its score given the uncompressed prefix
    full = own_nll(model, ids)
    assert np.abs(np.array([result.values[p] - full[p - 1] for p in check])).max() > 1e-3
    # KV reuse: each step feeds the previous (compressed) window and the new one, not the whole prefix
    assert result.forward_tokens < 2 * len(ids)


def test_reference_alignment_keeps_a_token_by_the_next_tokens_loss(tiny_lm):
    model, tokenizer = tiny_lm
    ids = _ids(tokenizer, DOCS[0] + " " + DOCS[1])
    runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=24, first_pass="full")
    result = runner.run(ids, 0, window_plan([len(ids) + 2], [0.5], 24))
    lo, hi = result.windows[0]  # decided on the first pass alone: token p by the full-context loss of p + 1
    full = own_nll(model, ids)  # full[p] is the loss of token p + 1
    assert np.array_equal(result.kept[lo:hi], full[lo:hi] > result.thresholds[0])
    assert not np.array_equal(result.kept[lo:hi], np.r_[np.nan, full][lo:hi] > result.thresholds[0])


def test_contrastive_scores_compare_with_and_without_the_question(tiny_lm):
    model, tokenizer = tiny_lm
    prefix = _ids(tokenizer, QUESTION + "\n\n")
    ctx = _ids(tokenizer, DOCS[0] + " " + DOCS[1])
    ids = np.concatenate([prefix, ctx])
    runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=24, alignment="token",
                                 compress_tail=True)
    result = runner.run(ids, len(prefix), window_plan([len(ctx) + 2], [0.5], 24), compare=True)
    assert result.kept[: len(prefix)].all()  # the question prefix is never dropped
    lo, hi = result.windows[-1]
    hi = min(hi, len(ids) - 1)  # the very last token is always kept
    diff = result.self_values[lo:hi] - result.values[lo:hi]
    assert np.array_equal(result.kept[lo:hi], ~(diff <= result.thresholds[-1]))
    # the self stream scores the kept context without the question; the main stream with it
    kept = np.flatnonzero(result.kept)
    ctx_kept = kept[kept >= len(prefix)]
    finished = [p for p in ctx_kept[1:] if p < result.windows[-1][0]]
    alone, rank_alone = own_nll(model, ids[ctx_kept]), {p: i for i, p in enumerate(ctx_kept)}
    with_q, rank_q = own_nll(model, ids[kept]), {p: i for i, p in enumerate(kept)}
    np.testing.assert_allclose([result.self_values[p] for p in finished],
                               [alone[rank_alone[p] - 1] for p in finished], atol=2e-4)
    np.testing.assert_allclose([result.values[p] for p in finished], [with_q[rank_q[p] - 1] for p in finished],
                               atol=2e-4)


@pytest.mark.parametrize("first_pass", ["window", "full"])
def test_batched_streams_score_as_the_two_streams_apart(tiny_lm, first_pass):
    """batch_streams: both contrastive streams in one batch of two rows (the GPU remedy) give the same scores."""
    model, tokenizer = tiny_lm
    prefix = _ids(tokenizer, QUESTION + "\n\n")
    ids = np.concatenate([prefix, _ids(tokenizer, DOCS[2])])
    assert len(ids) < 127  # within the tiny model's window: no eviction, so the streams can share a batch
    plan = window_plan([len(ids) - len(prefix) + 2], [0.5], 16)
    runs = {}
    for batched in (False, True):
        runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=16, first_pass=first_pass,
                                     batch_streams=batched)
        calls = []
        feed_pair = runner._feed_pair
        runner._feed_pair = lambda *a: calls.append(1) or feed_pair(*a)  # noqa: E731
        runs[batched] = (runner.run(ids, len(prefix), plan, compare=True), len(calls))
    (apart, _), (together, pairs) = runs[False], runs[True]
    assert pairs >= 1  # the batched path ran (from the second window on; the third with first_pass="full")
    assert len(apart.windows) >= 3 and together.forward_tokens == apart.forward_tokens
    np.testing.assert_allclose(together.values, apart.values, atol=1e-4)
    np.testing.assert_allclose(together.self_values, apart.self_values, atol=1e-4)
    assert np.array_equal(together.kept, apart.kept)


@pytest.mark.parametrize("first_pass,alignment,docs", [("window", "next", 1), ("full", "next", 1),
                                                       ("window", "token", 1), ("window", "next", 3)])
def test_reused_prefix_scores_as_the_references_re_feed(tiny_lm, first_pass, alignment, docs):
    """reuse_prefix: the tokens before a window's first drop stay cached instead of being re-fed; every score and
    every kept token are the reference's re-feed's, with fewer tokens fed (most where a first document keeps all,
    as LongLLMLingua's dynamic ratio gives the best-ranked one). With 3 more documents the prompt passes the tiny
    model's window of 128, the cache evicts, and the steps before an eviction re-feed as the reference does."""
    model, tokenizer = tiny_lm
    prefix = _ids(tokenizer, QUESTION + "\n\n")
    first, rest = _ids(tokenizer, DOCS[0]), _ids(tokenizer, " ".join(DOCS[1 : 1 + docs]))[: 40 if docs == 1 else None]
    ids = np.concatenate([prefix, first, rest])
    assert (len(ids) > 128) == (docs > 1)
    plan = window_plan([len(first), len(rest) + 2], [1.0, 0.5], 16)
    runs = {}
    for reuse in (False, True):
        runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=16, first_pass=first_pass,
                                     alignment=alignment, reuse_prefix=reuse, compress_tail=True)
        runs[reuse] = runner.run(ids, len(prefix), plan, compare=True)
    reference, reused = runs[False], runs[True]
    assert len(reference.windows) >= 4 and 0.3 < reference.kept[len(prefix) + len(first):].mean() < 0.9
    assert np.array_equal(reused.kept, reference.kept)
    np.testing.assert_allclose(reused.values, reference.values, atol=1e-4)
    np.testing.assert_allclose(reused.self_values, reference.self_values, atol=1e-4)
    # both streams skip the re-feed of (most of) the first document; with evictions only some steps do
    assert reused.forward_tokens <= reference.forward_tokens - (2 * (len(first) - 32) if docs == 1 else 1)


def test_long_input_keeps_the_cache_within_the_window(tiny_lm):
    model, tokenizer = tiny_lm
    ids = _ids(tokenizer, " ".join(DOCS * 12))
    assert len(ids) > 8 * 128
    runner = IterativeCompressor(CausalLMScorer(model, tokenizer), iterative_size=24, compress_tail=True)
    result = runner.run(ids, 0, window_plan([len(ids) + 2], [0.4], 24))
    assert result.max_cache <= 128
    assert 0.25 < result.kept.mean() < 0.6
    assert result.kept[:10].any() and result.kept[-30:].any()  # evicted positions still reach the output


# ------------------------------------------------------------------------------------------------ compressors
def test_llmlingua_keeps_instruction_and_question_and_meets_the_rate(tiny_lm):
    c = make("llmlingua", tiny_lm, compress_tail=True)
    res = c.compress(DOCS, instruction="Answer briefly.", question=QUESTION, rate=0.5)
    assert res.text.startswith("Answer briefly.\n\n") and res.text.endswith("\n\n" + QUESTION)
    assert 0.3 < res.rate < 0.7
    assert res.extras["ranking"]["kept_documents"]  # the budget controller ran
    for rate in (0.3, 0.5):  # per-window thresholds meet the rate
        ctx = make("llmlingua", tiny_lm, context_filter=False, compress_tail=True, threshold_scope="window")
        assert abs(ctx.compress(DOCS, rate=rate).rate - rate) < 0.05


def test_reference_mode_leaves_a_short_prompt_uncompressed(tiny_lm):
    text = DOCS[2]
    # the reference's own output (strict_budget=False): llmlingua #196 leaves it whole, over the rate
    assert make("llmlingua", tiny_lm, iterative_size=60, strict_budget=False).compress(text, rate=0.5).text == text
    strict = make("llmlingua", tiny_lm, iterative_size=60).compress(text, rate=0.5)  # the default keeps the promise
    assert 0 < strict.compressed_tokens <= int(0.5 * strict.origin_tokens)
    assert make("llmlingua", tiny_lm, iterative_size=60, compress_tail=True).compress(text, rate=0.5).rate < 0.8


def test_keep_policies_are_honoured(tiny_lm):
    prompt = Prompt((
        TextSegment("Use the documents.", role="instruction"),
        TextSegment(DOCS[0], role="context", keep=True),
        TextSegment(DOCS[1], role="context", rate=0.8),
        TextSegment(DOCS[3], role="context"),
        TextSegment(QUESTION, role="question"),
    ))
    res = make("llmlingua", tiny_lm, compress_tail=True, context_filter=False).compress(prompt, rate=0.65)
    texts = [s.text for s in res.prompt.segments]
    assert texts[0] == "Use the documents." and texts[1] == DOCS[0] and texts[-1] == QUESTION
    own, pooled = res.selections[2], res.selections[3]
    assert own.kept.mean() > pooled.kept.mean()  # the own-rate segment keeps more than the pooled one
    with pytest.raises(BudgetError):
        make("llmlingua", tiny_lm).compress(prompt, rate=0.2)  # below what the kept segments take


def test_keep_split_preserves_blank_lines_by_the_tokenizers_newline(tiny_lm):
    model, tokenizer = tiny_lm
    text = "\n\n".join(DOCS * 2)
    c = make("llmlingua", tiny_lm, keep_split=True, compress_tail=True)
    assert c.newline_id == tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    res = c.compress(text, rate=0.3)
    assert res.rate < 0.6 and res.text.count("\n\n") == text.count("\n\n")


def test_reordering(tiny_lm):
    # keep every document whole (the reference's selection, over the rate: strict_budget=False): only the order changes
    kw = dict(context_budget="*100", token_filter=False, strict_budget=False)
    sort = make("longllmlingua", tiny_lm, reorder="sort", **kw).compress(DOCS, question=QUESTION)
    order = sort.extras["ranking"]["order"]
    docs = [s.text for s in sort.prompt.segments if s.role.value == "context"]
    assert docs == [DOCS[i] for i in order]
    two = make("longllmlingua", tiny_lm, reorder="two_stage", **kw).compress(DOCS, question=QUESTION)
    docs = [s.text for s in two.prompt.segments if s.role.value == "context"]
    assert docs == [DOCS[i] for i in order[0::2] + order[1::2][::-1]]  # the best at both ends
    original = make("longllmlingua", tiny_lm, reorder="original", **kw).compress(DOCS, question=QUESTION)
    assert [s.text for s in original.prompt.segments if s.role.value == "context"] == DOCS


def test_dynamic_ratio_gives_better_documents_more_tokens(tiny_lm):
    docs = [d + " " + d for d in DOCS]
    kw = dict(context_budget="*100", compress_tail=True, alignment="token", reorder="original")
    res = make("longllmlingua", tiny_lm, dynamic_ratio=0.4, **kw).compress(docs, question=QUESTION, rate=0.5)
    order = res.extras["ranking"]["order"]
    kept = {i: res.selections[i].kept.mean() for i in range(len(docs))}  # selections follow the input order
    assert kept[order[0]] > kept[order[-1]] + 0.2
    flat = make("longllmlingua", tiny_lm, dynamic_ratio=0.0, **kw).compress(docs, question=QUESTION, rate=0.5)
    spread = [flat.selections[i].kept.mean() for i in range(len(docs))]
    assert max(spread) - min(spread) < kept[order[0]] - kept[order[-1]]


def test_forced_documents_survive_the_budget(tiny_lm):
    # the budget runs out at the first ranked document (whole documents, as the reference keeps them)
    kw = dict(context_budget="-1000", token_filter=False, strict_budget=False)
    res = make("longllmlingua", tiny_lm, **kw).compress(DOCS, question=QUESTION)
    assert len(res.extras["ranking"]["kept_documents"]) == 1
    forced = make("longllmlingua", tiny_lm, force_context_ids=[3], **kw).compress(DOCS, question=QUESTION)
    assert 3 in forced.extras["ranking"]["kept_documents"] and DOCS[3] in forced.text


def test_question_aware_token_scores_depend_on_the_question(tiny_lm):
    c = make("longllmlingua", tiny_lm, context_filter=False, compress_tail=True)
    a = c.compress(DOCS, question=QUESTION, rate=0.5).text
    b = c.compress(DOCS, question="Which team won the Super Bowl game in 2016?", rate=0.5).text
    assert a.split("\n\n")[:-1] != b.split("\n\n")[:-1]
    with pytest.raises(InvalidPromptError, match="question"):
        c.compress(DOCS, rate=0.5)


def test_batch_matches_one_by_one(tiny_lm):
    prompts = [Prompt.from_documents(DOCS[i:] + DOCS[:i], question=QUESTION) for i in range(3)]
    for name, first_pass in (("llmlingua", "full"), ("longllmlingua", "window")):
        c = make(name, tiny_lm, first_pass=first_pass, compress_tail=True)
        batch = c.compress_batch(prompts, rate=0.5)
        for p, b in zip(prompts, batch):
            assert b.text == c.compress(p, rate=0.5).text


def test_ranking_first_pass_takes_the_rankings_scores_and_saves_the_first_window(tiny_lm, monkeypatch):
    """first_pass="ranking": ITPC starts from each kept document's own scores from the ranking (as a full first pass
    would, without the documents before it) and feeds nothing for the first window; elsewhere it runs as "window"."""
    model, tokenizer = tiny_lm
    seen = []
    run = IterativeCompressor.run

    def spy(self, ids, start, plan, **kw):
        seen.append((self.first_pass, ids, kw.get("initial")))
        return run(self, ids, start, plan, **kw)

    monkeypatch.setattr(IterativeCompressor, "run", spy)
    prompt = Prompt.from_documents(DOCS, question=QUESTION)
    fed = {}
    for first_pass in ("ranking", "window", "full"):
        res = make("llmlingua", tiny_lm, first_pass=first_pass).compress(prompt, rate=0.5)
        fed[first_pass] = res.extras["forward_tokens"]
    mode, ids, initial = seen[0]
    assert mode == "full" and initial is not None and initial[1] is None
    own = initial[0]
    kept = [DOCS[i] for i in res.extras["ranking"]["kept_documents"]]
    assert len(kept) > 1
    cursor = 0
    for k, doc in enumerate(kept):  # each kept document's own scores, where it sits in the joined context
        doc_ids = _ids(tokenizer, doc)
        assert np.array_equal(ids[cursor : cursor + len(doc_ids)], doc_ids)
        assert np.isnan(own[cursor])
        np.testing.assert_allclose(own[cursor + 1 : cursor + len(doc_ids)], own_nll(model, doc_ids), atol=1e-4)
        cursor += len(doc_ids) + len(_ids(tokenizer, "\n\n")) * (k < len(kept) - 1)
    assert cursor == len(ids)
    # the full pass scores the first document alike (the first window's decisions); unlike it, nothing extra is fed
    full_initial = seen[2][2]
    first = len(_ids(tokenizer, kept[0]))
    np.testing.assert_allclose(own[1:first], full_initial[0][1:first], atol=1e-4)
    assert fed["ranking"] < fed["window"]
    # a question-conditioned ranking (LongLLMLingua's) scores no document token on its own: "window" runs
    seen.clear()
    make("llmlingua", tiny_lm, first_pass="ranking", rank_condition="after").compress(prompt, rate=0.5)
    assert seen[0][0] == "window" and seen[0][2] is None
    with pytest.raises(ConfigError, match="first_pass"):
        make("llmlingua", tiny_lm, first_pass="half")


def test_without_strict_budget_the_target_is_the_references(tiny_lm):
    """strict_budget=False plans the reference's target: rate x the segments' own tokens (llmlingua 0.2.2 counts
    instruction, documents and question apart, no separators); the strict default takes the separators out too."""
    prompt = Prompt.from_documents(DOCS, instruction="Answer the question using the documents.", question=QUESTION)
    loose = make("llmlingua", tiny_lm, strict_budget=False).prepare(prompt, rate=0.4)
    strict = make("llmlingua", tiny_lm).prepare(prompt, rate=0.4)
    assert loose.plan.total_tokens == sum(loose.costs) and loose.plan.target_tokens == int(0.4 * sum(loose.costs))
    separators = strict.plan.total_tokens - sum(strict.costs)
    assert separators > 0 and strict.plan.pooled_target < loose.plan.pooled_target


def test_sentence_filter_keeps_whole_sentences(tiny_lm):
    c = make("llmlingua", tiny_lm, sentence_filter=True, token_filter=False, context_filter=False,
             keep_first_sentence=1)
    res = c.compress(DOCS[:2], rate=0.4)
    body = res.text
    assert DOCS[0].split(". ")[0] in body  # the bonus keeps the first sentence
    assert res.rate < 0.8


def test_recover_maps_an_answer_back_to_the_original(tiny_lm):
    _, tokenizer = tiny_lm
    original = "The quick brown fox jumps over the lazy dog near the river."
    compressed = "The quick fox over lazy dog river."
    out = recover(original, compressed, "The quick fox over", tokenizer)
    assert out == "The quick brown fox jumps over"  # the words compression cut come back
    assert recover(original, compressed, "nothing here", tokenizer) == "nothing here"


def test_bad_config_is_a_config_error(tiny_lm):
    with pytest.raises(ConfigError, match="context_budget"):
        make("llmlingua", tiny_lm, context_budget="lots")
    with pytest.raises(ConfigError, match="reorder"):
        make("longllmlingua", tiny_lm, reorder="random")
    with pytest.raises(ConfigError, match="iterative_size"):
        make("llmlingua", tiny_lm, iterative_size=100).compress(DOCS, rate=0.5)


def test_yaml_configs_and_cli_run(tiny_dir, capsys, tmp_path):
    from mmcompress.cli import main

    for name in ("llmlingua", "longllmlingua"):
        c = create_compressor(name, model=str(tiny_dir), iterative_size=24)  # the configs/ stem name
        assert type(c).__name__.lower() == name
    yaml_c = create_compressor("configs/hard/longllmlingua.yaml", model=str(tiny_dir), iterative_size=24)
    assert yaml_c.config.condition_compare and yaml_c.config.reorder == "sort"
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"documents": DOCS, "question": QUESTION}) + "\n")
    code = main(["compress", str(path), "--jsonl", "--method", "configs/hard/longllmlingua.yaml", "--model",
                 str(tiny_dir), "--set", "iterative_size=24", "--rate", "0.5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    row = json.loads(out.out.strip().splitlines()[-1])
    assert row["compressed_prompt"].endswith(QUESTION) and row["compressed_tokens"] < row["origin_tokens"]
    code = main(["compress", str(path), "--jsonl", "--method", "llmlingua", "--model", str(tiny_dir),
                 "--set", "reorder=sideways"])
    assert code == 2 and "reorder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ parity, real model
@pytest.mark.slow
def test_parity_with_the_published_package(smollm2):
    """Two rows of the golden file (llmlingua 0.2.2 outputs with SmolLM2), all three settings, reference first pass."""
    import importlib.util
    import sys
    from pathlib import Path

    from conftest import SHARED, shared_file

    golden_path = SHARED / "peer" / "golden_multidoc_dev.jsonl"
    if not golden_path.exists():
        pytest.skip(f"{golden_path} is absent")
    data = shared_file("multidoc_qa_dev.jsonl")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import llmlingua_parity as parity

    golden = {(r["id"], r["setting"]): r["compressed_prompt"] for r in map(json.loads, golden_path.open())}
    ids = list(dict.fromkeys(i for i, _ in golden))[:2]
    rows = [r for r in map(json.loads, data.open()) if r["id"] in ids]
    ours = parity.ours_rows(rows, set(ids), smollm2, "full")  # the reference's first pass: its exact outputs
    assert len(ours) == 2 * len(parity.SETTINGS)
    spec = importlib.util.spec_from_file_location("agreement", SHARED / "peer" / "agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    encode = lambda s: smollm2.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for r in ours:
        score = agreement.agreement(golden[(r["id"], r["setting"])], r["compressed_prompt"], encode)
        assert score >= parity.TARGETS[r["setting"]], (r["setting"], r["id"], score)


@pytest.mark.slow
def test_real_model_longllmlingua_short(smollm2):
    c = create_compressor("longllmlingua", model=smollm2.model, tokenizer=smollm2.tokenizer)
    res = c.compress(DOCS, question=QUESTION, rate=0.5)
    assert res.text.endswith(QUESTION) and res.rate < 0.8
    assert "Paris" in res.text  # the document that answers the question survives the question-aware ranking


def test_budget_trim_takes_the_lowest_ranked_documents_first(tiny_lm):
    """When the rendered prompt is over the rate, ``budget_trim: document_rank`` (the default) takes the kept tokens
    of the worst-ranked document first, then the next one up, and never touches a better document before a worse one
    is used up; ``share`` takes about the same share of every document, the best-ranked one included."""
    docs = [d + " " + d for d in DOCS]
    kw = dict(context_budget="*100", dynamic_ratio=0.4)
    touched_best = False
    c = make("longllmlingua", tiny_lm, **kw)
    for rate in (0.4, 0.45, 0.5):
        request = c.prepare(docs, question=QUESTION, rate=rate)
        own = c.compress_segments(request)  # the method's own selection under the same plan, before the check
        order = request.extras["ranking"]["order"]
        strict = c.compress(docs, question=QUESTION, rate=rate)
        untrimmed = c.count_tokens([c._assemble(request, own)[0].text])[0]
        assert strict.compressed_tokens <= int(rate * strict.origin_tokens) < untrimmed
        loose = [o.selection for o in own]
        lost = [int(loose[i].kept.sum() - strict.selections[i].kept.sum()) for i in order]
        left = [int(strict.selections[i].kept.sum()) for i in order]
        assert lost[0] == 0 and sum(lost) > 0
        for r in range(len(order)):
            if lost[r]:  # every document ranked below one that lost tokens is used up
                assert all(n == 0 for n in left[r + 1 :]), (rate, lost, left)
        share = make("longllmlingua", tiny_lm, budget_trim="share", **kw).compress(docs, question=QUESTION, rate=rate)
        assert share.compressed_tokens <= int(rate * share.origin_tokens)
        touched_best |= share.selections[order[0]].kept.sum() < loose[order[0]].kept.sum()
    assert touched_best
    with pytest.raises(ConfigError, match="budget_trim"):
        make("longllmlingua", tiny_lm, budget_trim="random")
