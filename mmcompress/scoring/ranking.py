"""Perplexity ranking of documents (or sentences) by a causal LM: the coarse step of LLMLingua and LongLLMLingua.

- ``condition="none"`` (LLMLingua's budget controller): the mean NLL of each document on its own; documents with the
  *highest* perplexity rank first (they carry the most information).
- ``condition="after"`` (LongLLMLingua): the mean NLL of the *question* tokens given the document (``doc + query``);
  the document that makes the question most predictable ranks first.
- ``condition="before"``: the mean NLL of the document given the question (``query + doc``), lowest first.

As in llmlingua 0.2.2 (``get_condition_ppl``), texts are tokenized with the tokenizer's own special tokens, the first
token gets no score, and the query is joined to the document with no separator. Unlike it, all documents go through
the model in a few padded, length-bucketed forward passes instead of one pass each.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .causal_lm import CausalLMScorer

CONDITIONS = ("none", "after", "before")
QUERY_SUFFIX = " We can get the answer to this question in the given documents."


@dataclass
class Ranking:
    """``order``: document indices best first; ``scores[i]``: document ``i``'s mean NLL (nats) under the condition;
    ``token_losses[i]``: the NLL of each of document ``i``'s own tokens (NaN for the first token and for the tokens
    the condition does not average, which get no LM head), a by-product."""

    order: list[int]
    scores: np.ndarray
    token_losses: list[np.ndarray]


def condition_ppl_jobs(tokenizer, texts: Sequence[str], query: str, condition: str) -> list[tuple[np.ndarray, int, int]]:
    """For each text: ``(ids, first, stop)``: the token ids to score and the slice ``[first, stop)`` of per-token
    losses (indexed by the token they score) that the condition averages."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")

    def encode(batch: list[str]) -> list[list[int]]:
        return tokenizer(batch, add_special_tokens=True)["input_ids"] if batch else []

    texts = list(texts)
    if condition == "none":
        return [(np.asarray(ids, np.int64), 1, len(ids)) for ids in encode(texts)]
    if condition == "after":
        joined = encode([t + query for t in texts])
        alone = encode(texts)
        return [(np.asarray(j, np.int64), len(a), len(j)) for j, a in zip(joined, alone)]
    joined = encode([query + t for t in texts])
    q = len(encode([query])[0])
    return [(np.asarray(j, np.int64), q, len(j)) for j in joined]


def rank_by_perplexity(
    scorer: CausalLMScorer,
    texts: Sequence[str],
    question: str = "",
    condition: str = "none",
    query_suffix: str = QUERY_SUFFIX,
) -> Ranking:
    """Rank ``texts`` (one batched scoring call). Ties keep the input order (a stable sort, as in the reference)."""
    return rank_many(scorer, [list(texts)], [question], condition, query_suffix)[0]


def rank_many(
    scorer: CausalLMScorer,
    groups: Sequence[Sequence[str]],
    questions: Sequence[str],
    condition: str = "none",
    query_suffix: str = QUERY_SUFFIX,
) -> list[Ranking]:
    """Rank several groups of texts (e.g. the documents of many prompts) with one batched scoring call."""
    jobs, owners = [], []
    for g, (texts, question) in enumerate(zip(groups, questions)):
        query = (question or "") + query_suffix
        for job in condition_ppl_jobs(scorer.tokenizer, texts, query, condition):
            jobs.append(job)
            owners.append(g)
    # only the averaged slice needs the LM head ("after": the query tokens, not the document before them)
    losses = _own_losses(scorer, [ids for ids, _, _ in jobs], [first for _, first, _ in jobs])
    out: list[Ranking] = []
    cursor = 0
    for g, texts in enumerate(groups):
        n = len(texts)
        scores, token_losses = np.zeros(n, np.float32), []
        for i in range(n):
            ids, first, stop = jobs[cursor + i]
            own = losses[cursor + i]
            part = own[first:stop]
            scores[i] = np.float32(part.mean(dtype=np.float32)) if len(part) else np.float32(np.nan)
            token_losses.append(own)
        cursor += n
        direction = -1.0 if condition == "none" else 1.0
        order = [i for i, _ in sorted(enumerate(scores.tolist()), key=lambda x: direction * x[1])]
        out.append(Ranking(order, scores, token_losses))
    return out


def losses_in_context(ranking: Ranking, used: Sequence[int], spans: Sequence[tuple[int, int]],
                      offsets: np.ndarray) -> np.ndarray | None:
    """Own-token losses of the documents ``used`` (in that order), as ``ranking`` scored each alone, placed over the
    tokens of the text that joins them (``spans``: each document's characters there; ``offsets``: its tokens'), NaN
    elsewhere (separators, each document's first token). None if a document's tokens there are not the ones it was
    scored with alone (a count that differs, e.g. a BOS the ranking added)."""
    own = np.full(len(offsets), np.nan, np.float32)
    starts = np.asarray(offsets)[:, 0]
    for (s, e), d in zip(spans, used):
        positions = np.flatnonzero((starts >= s) & (starts < e))
        losses = ranking.token_losses[d]
        if len(positions) != len(losses):
            return None
        own[positions] = losses
    return own


def _own_losses(scorer: CausalLMScorer, ids: list[np.ndarray], score_from: Sequence[int] | None = None) -> list[np.ndarray]:
    """NLL of every token given the tokens before it (no start token; the first token is NaN). With ``score_from``,
    tokens before ``score_from[i]`` are context only: NaN, and no LM head is spent on them."""
    out: list[np.ndarray] = [np.full(len(x), np.nan, np.float32) for x in ids]
    first = [max(1, int(f)) for f in score_from] if score_from is not None else [1] * len(ids)
    todo = [i for i, x in enumerate(ids) if len(x) >= 2 and first[i] < len(x)]
    saved, scorer.start_id = scorer.start_id, None
    try:
        # the tokens before first[i] go in as the prefix: token_nll returns the losses of the rest
        scored = scorer.token_nll([ids[i][first[i] :] for i in todo], [ids[i][: first[i]] for i in todo])
        for i, nll in zip(todo, scored):
            out[i][first[i] :] = nll
    finally:
        scorer.start_id = saved
    return out
