"""The scoring core: exact self-information, batching, conditioning, and bounded-memory long inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress.scoring import CausalLMScorer, UnigramScorer

TEXTS = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog again and again.", "Hi"]


def plain_nll(model, ids: list[int]) -> np.ndarray:
    """-log p(x_i | x_<i) from one ordinary forward pass (the definition)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1)
    return -logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


def test_self_information_matches_the_definition_and_batching_changes_nothing(tiny_lm):
    model, tok = tiny_lm
    scorer = CausalLMScorer(model, tok, max_batch_tokens=64)  # forces several padded batches
    batched = scorer.self_information(TEXTS)
    for text, scores in zip(TEXTS, batched):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert scores.ids.tolist() == ids
        assert np.allclose(scores.scores, plain_nll(model, [scorer.start_id, *ids]), atol=1e-4)
        alone = scorer.self_information([text])[0]
        assert np.allclose(alone.scores, scores.scores, atol=1e-5)
        assert scores.offsets.shape == (len(ids), 2)


def test_padding_waste_is_bounded_on_cpu_and_changes_no_score(tiny_lm, monkeypatch):
    """On a CPU a padded position costs as much as a real one: batches hold lengths within 5% of their longest."""
    import mmcompress.scoring.causal_lm as causal_lm

    model, tok = tiny_lm
    texts = ["word " * n for n in (40, 39, 36, 30, 24, 23)]
    batches = []
    real = causal_lm.CausalLMScorer._nll_batch
    monkeypatch.setattr(causal_lm.CausalLMScorer, "_nll_batch",
                        lambda self, seqs, *a: batches.append([len(s) for s in seqs]) or real(self, seqs, *a))
    lean = CausalLMScorer(model, tok)
    assert lean.max_pad_waste == 0.05
    lean_scores = lean.self_information(texts)
    assert all(min(b) >= 0.95 * max(b) for b in batches) and len(batches) > 2
    batches.clear()
    loose = CausalLMScorer(model, tok, max_pad_waste=0.2)
    loose_scores = loose.self_information(texts)
    assert any(min(b) < 0.95 * max(b) for b in batches)
    for a, b in zip(lean_scores, loose_scores):
        assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_conditional_scores_equal_scoring_the_concatenation(tiny_lm):
    model, tok = tiny_lm
    scorer = CausalLMScorer(model, tok)
    prefix = "Which team won the game?"
    cond = scorer.self_information(["The Broncos won."], prefix=prefix)[0]
    p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    t_ids = tok("The Broncos won.", add_special_tokens=False)["input_ids"]
    full = plain_nll(model, [scorer.start_id, *p_ids, *t_ids])
    assert np.allclose(cond.scores, full[len(p_ids):], atol=1e-4)
    assert not np.allclose(cond.scores, scorer.self_information(["The Broncos won."])[0].scores, atol=1e-3)
    ppl = scorer.perplexity(["The Broncos won."], prefix=[prefix])
    assert np.isclose(ppl[0], np.exp(cond.scores.mean()), rtol=1e-5)


def test_texts_longer_than_the_window_use_a_bounded_sliding_cache(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    text = " ".join(["The river flows to the sea and the capital of France is Paris."] * 40)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    scorer = CausalLMScorer(model, tok, chunk_size=32)
    assert n > 4 * scorer.window  # tiny model window: 128 positions
    seen = []
    forward = scorer._forward

    def spy(input_ids, attention_mask=None, cache=None, position_ids=None):
        if cache is not None:
            seen.append(cache.get_seq_length() + input_ids.shape[1])
        return forward(input_ids, attention_mask, cache, position_ids)

    monkeypatch.setattr(scorer, "_forward", spy)
    long = scorer.self_information([text])[0]
    assert len(long) == n and np.isfinite(long.scores).all()
    assert max(seen) <= scorer.window  # attention never spans more than the window: bounded memory
    # tokens whose whole context fits in the first chunk are scored exactly
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert np.allclose(long.scores[:32], plain_nll(model, [scorer.start_id, *ids[:33]])[:32], atol=1e-4)


def test_absolute_position_models_score_long_texts_with_overlapping_windows(tiny_gpt2):
    model, tok = tiny_gpt2
    text = " ".join(["Neural networks learn representations from data."] * 30)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    scorer = CausalLMScorer(model, tok)
    assert len(ids) > 2 * model.config.n_positions
    scores = scorer.self_information([text])[0]
    assert len(scores) == len(ids) and np.isfinite(scores.scores).all()
    head = plain_nll(model, [scorer.start_id, *ids[: model.config.n_positions - 1]])
    assert np.allclose(scores.scores[: len(head)], head, atol=1e-4)


def test_unigram_scorer_ranks_rare_words_above_common_ones():
    scores = UnigramScorer().self_information(["the photosynthesis ."])[0]
    assert scores.offsets.tolist() == [[0, 3], [4, 18], [19, 20]]
    the, photo, dot = scores.scores
    assert photo > the > 0 and dot < photo
