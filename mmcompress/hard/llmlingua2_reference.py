"""LLMLingua-2's selection as the published package makes it, restated on mmcompress's classifier tokens.

Reference: llmlingua 0.2.2 (PyPI; microsoft/LLMLingua), ``llmlingua/prompt_compressor.py`` and ``llmlingua/utils.py``;
file:line citations below are to that release. The classifier's probabilities come from
:class:`~mmcompress.scoring.TokenClassifierScorer` (same chunks, special tokens and softmax); this module regroups its
tokens into llmlingua's words and applies llmlingua's rules:

- words: a token starts a word unless it continues one (``##`` in WordPiece; no ``▁`` / ``Ġ`` start marker otherwise,
  where a one-character punctuation token also starts a word); special tokens (``[UNK]``) are skipped
  (utils.py:77-94, prompt_compressor.py:2255-2292);
- force tokens: a word whose first token (marker stripped) is a force token gets probability 1.0 for that token; a
  force token the classifier does not spell as one token is first replaced by a placeholder ``[NEWi]``
  (prompt_compressor.py:772-780, 808-809); ``force_reserve_digit`` sets each token holding a digit to 1.0;
- a word's probability is the mean (or first) of its tokens'; the context-level filter's word probability is the
  first token's (the "no force" list repeats the first token's value, prompt_compressor.py:2283-2290);
- per chunk: every word's probability repeated once per token of the word counted alone in the counting tokenizer,
  threshold = percentile ``int(100 * reduce_rate + 1)`` of that list, words strictly above kept
  (prompt_compressor.py:2399-2412);
- rendering: the kept words of each chunk re-joined by ``convert_tokens_to_string`` (prompt_compressor.py:2426).
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Request, SegmentOutcome, keep_whole
from ..prompt import Policy
from ..results import SegmentSelection
from ..scoring.token_classifier import WordProbs
from ..text_units import Units

PLACEHOLDER = "[NEW{}]"  # prompt_compressor.py:110
MAX_FORCE_TOKENS = 100  # prompt_compressor.py:96
_DIGIT = re.compile(r"\d")


@dataclass
class ReferenceWords:
    """llmlingua's words of one text: original-text ``spans`` (n, 2) (a word that is only whitespace, e.g. a ``"\\n"``
    force token, keeps its raw span), ``pieces`` (the word as llmlingua spells it: first token as is, continuations
    with their marker stripped, placeholders restored), ``probs`` (with forcing), ``filter_probs`` (for the
    context-level filter), ``chunk`` (the chunk of the word's first token), ``blank`` (only whitespace)."""

    spans: np.ndarray
    pieces: list[str]
    probs: list[float]
    filter_probs: list[float]
    chunk: np.ndarray
    blank: np.ndarray

    def __len__(self) -> int:
        return len(self.pieces)


def placeholder_map(tokenizer: Any, force_tokens: list[str]) -> dict[str, str]:
    """Force tokens the classifier does not spell as exactly one token -> their placeholder (prompt_compressor.py:772-776)."""
    if len(force_tokens) > MAX_FORCE_TOKENS:
        raise ValueError(f"at most {MAX_FORCE_TOKENS} force tokens (llmlingua's limit), got {len(force_tokens)}")
    return {t: PLACEHOLDER.format(i) for i, t in enumerate(force_tokens) if len(tokenizer.tokenize(t)) != 1}


def ensure_placeholders(model: Any, tokenizer: Any) -> None:
    """Add llmlingua's ``[NEWi]`` tokens to a classifier that lacks them, as ``init_llmlingua2`` does
    (prompt_compressor.py:98-112: seed 42, add, resize the embeddings). The new rows are drawn by this transformers
    version, so they equal the reference's only when the classifier already ships the tokens."""
    import torch

    names = [PLACEHOLDER.format(i) for i in range(MAX_FORCE_TOKENS)]
    if all(tokenizer.convert_tokens_to_ids(n) != tokenizer.unk_token_id for n in names):
        return
    torch.manual_seed(42)
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    model.resize_token_embeddings(len(tokenizer))


def substitute(text: str, token_map: dict[str, str]) -> tuple[str, np.ndarray, np.ndarray]:
    """``text`` with each force token of ``token_map`` replaced by its placeholder (in order, as the reference's
    ``str.replace`` loop, prompt_compressor.py:808-809), and for every position of the new text its original start
    and end position (a placeholder maps onto the whole occurrence it replaced)."""
    pieces = [(text, 0, len(text), False)]  # (string, original start, original end, is placeholder)
    for original, placeholder in token_map.items():
        out = []
        for s, a, b, is_ph in pieces:
            if is_ph:
                out.append((s, a, b, is_ph))
                continue
            pos = 0
            for m in re.finditer(re.escape(original), s):
                if m.start() > pos:
                    out.append((s[pos : m.start()], a + pos, a + m.start(), False))
                out.append((placeholder, a + m.start(), a + m.end(), True))
                pos = m.end()
            if pos < len(s) or not s:
                out.append((s[pos:], a + pos, b, False))
        pieces = out
    starts, ends = [], []
    for s, a, b, is_ph in pieces:
        if is_ph:
            starts += [a] * len(s)
            ends += [b] * len(s)
        else:
            starts += range(a, a + len(s))
            ends += range(a + 1, a + len(s) + 1)
    new = "".join(p[0] for p in pieces)
    start_map = np.asarray(starts + [len(text)], dtype=np.int64)
    end_map = np.asarray([0] + ends, dtype=np.int64)  # end_map[j]: original end of new text[:j]
    return new, start_map, end_map


def _marker_rule(tokenizer: Any) -> str | None:
    """``None`` for WordPiece (``##`` continues a word), else the start marker (``▁`` SentencePiece, ``Ġ`` BPE)."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if getattr(model, "continuing_subword_prefix", None):
        return None
    pieces = tokenizer.tokenize("a b")
    return pieces[-1][0] if pieces and pieces[-1] != "b" else "▁"


def reference_words(wp: WordProbs, tokenizer: Any, *, force_tokens: list[str], token_map: dict[str, str],
                    token_to_word: str = "mean", force_reserve_digit: bool = False,
                    start_map: np.ndarray | None = None, end_map: np.ndarray | None = None) -> ReferenceWords:
    """Regroup the classifier tokens of ``wp`` into llmlingua's words (``__merge_token_to_word``,
    prompt_compressor.py:2255-2292, with ``is_begin_of_new_word`` / ``get_pure_token`` of utils.py:77-111)."""
    marker = _marker_rule(tokenizer)
    specials = {t for t in (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token, tokenizer.unk_token,
                            tokenizer.mask_token, tokenizer.bos_token, tokenizer.eos_token) if t}
    placeholders = set(token_map.values())
    restore = {v: k for k, v in token_map.items()}
    force = set(force_tokens)

    def pure(token: str) -> str:
        return token.lstrip("##") if marker is None else token.lstrip(marker)

    def begins(token: str) -> bool:
        if marker is None:
            return pure(token) in force or pure(token) in placeholders or not token.startswith("##")
        return token in string.punctuation or token in force or token in placeholders or token.startswith(marker)

    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in wp.token_ids])
    probs = np.asarray(wp.token_probs, dtype=np.float32)  # the reference's per-token values are float32 scalars
    pieces: list[str] = []
    word_probs: list[list[Any]] = []
    first_probs: list[list[Any]] = []
    members: list[list[int]] = []
    prob_no_force: Any = None
    for j, (token, prob) in enumerate(zip(tokens, probs)):
        if token in specials:
            continue
        if begins(token) or not pieces:
            prob_no_force = prob
            if pure(token) in force or pure(token) in placeholders:
                prob = 1.0
            token = restore.get(token, token)
            pieces.append(token)
            word_probs.append([1.0 if force_reserve_digit and _DIGIT.search(token) else prob])
            first_probs.append([prob_no_force])
            members.append([j])
        else:
            pieces[-1] += pure(token)
            word_probs[-1].append(1.0 if force_reserve_digit and _DIGIT.search(token) else prob)
            first_probs[-1].append(prob_no_force)  # the first token's value again (prompt_compressor.py:2290)
            members[-1].append(j)
    convert = (lambda p: sum(p) / len(p)) if token_to_word == "mean" else (lambda p: p[0])  # prompt_compressor.py:2294-2302
    offsets = np.asarray(wp.token_offsets, dtype=np.int64).reshape(-1, 2)
    spans = np.zeros((len(pieces), 2), dtype=np.int64)
    blank = np.zeros(len(pieces), dtype=bool)
    for w, m in enumerate(members):
        a, b = int(offsets[m, 0].min()), int(offsets[m, 1].max())
        if start_map is not None:
            a, b = int(start_map[min(a, len(start_map) - 1)]), int(end_map[b])
        spans[w] = a, max(a, b)
    return ReferenceWords(spans, pieces, [convert(p) for p in word_probs], [convert(p) for p in first_probs],
                          np.asarray([wp.token_chunk[m[0]] for m in members], dtype=np.int64), blank)


def strip_spans(words: ReferenceWords, text: str) -> np.ndarray:
    """Span units of the words that hold more than whitespace: spans stripped, made non-overlapping; sets
    ``words.blank``. Returns the indices of those words."""
    keep, previous_end = [], 0
    for w, (a, b) in enumerate(words.spans):
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece.rstrip())
        a2, b2 = max(a + lead, previous_end), a + trail
        if b2 <= a2:
            words.blank[w] = True
            continue
        words.spans[w] = a2, b2
        previous_end = b2
        keep.append(w)
    return np.asarray(keep, dtype=np.int64)


def chunk_keep(probs: list[float], pieces: list[str], counts: list[int], reduce_rate: float, force_tokens: list[str],
               drop_consecutive: bool = False) -> np.ndarray:
    """Keep mask of the words of one chunk (``__compress``, prompt_compressor.py:2384-2424)."""
    if reduce_rate <= 0:  # prompt_compressor.py:2319: nothing to drop
        return np.ones(len(pieces), dtype=bool)
    word_probs = list(probs)
    force = set(force_tokens)
    if drop_consecutive:  # prompt_compressor.py:2385-2397
        threshold = np.percentile(word_probs, int(100 * reduce_rate))
        is_token_between, prev = False, None
        for i, (word, word_prob) in enumerate(zip(pieces, word_probs)):
            if word in force:
                if is_token_between:
                    is_token_between = False
                elif word == prev:
                    word_probs[i] = 0.0
                prev = word
            else:
                is_token_between |= word_prob > threshold
    token_probs = [p for p, n in zip(word_probs, counts) for _ in range(n)]
    if not token_probs:
        return np.zeros(len(pieces), dtype=bool)
    threshold = np.percentile(token_probs, int(100 * reduce_rate + 1))
    keep = np.zeros(len(pieces), dtype=bool)
    last_kept = None
    for i, (word, word_prob) in enumerate(zip(pieces, word_probs)):
        if word_prob > threshold or (threshold == 1.0 and word_prob == threshold):
            if drop_consecutive and word in force and last_kept == word:
                continue
            keep[i] = True
            last_kept = word
    return keep


def context_keep(doc_probs: list[float], context_level_rate: float) -> np.ndarray:
    """Documents kept by the context-level filter: mean filter probability at or above the percentile
    ``int(100 * (1 - context_level_rate))`` (prompt_compressor.py:848-860)."""
    threshold = np.percentile(doc_probs, int(100 * (1 - context_level_rate)))
    return np.asarray([p >= threshold for p in doc_probs], dtype=bool)


def rejoin(tokenizer: Any, words: ReferenceWords, keep: np.ndarray) -> str:
    """The reference's text: each chunk's kept words through ``convert_tokens_to_string``, chunks joined with nothing
    (prompt_compressor.py:2426, 2441-2444)."""
    out = []
    for c in np.unique(words.chunk):
        kept = [words.pieces[i] for i in np.flatnonzero((words.chunk == c) & keep)]
        out.append(tokenizer.convert_tokens_to_string(kept) if kept else "")
    return "".join(out)


# ------------------------------------------------------------------------------------------ the compressor's path
def compress_chunked(compressor: Any, requests: Sequence[Request]) -> list[list[SegmentOutcome]]:
    """Outcomes of ``LLMLingua2`` with ``budget: chunk``: classify the compressible segments of all requests in shared
    batches, regroup into llmlingua's words, filter documents, threshold each chunk, render."""
    cfg = compressor.config
    scorer = compressor.scorer
    tokenizer = scorer.tokenizer
    token_map = placeholder_map(tokenizer, list(cfg.force_tokens))
    if token_map:
        ensure_placeholders(scorer.model, tokenizer)
    # chunk ends as tokens, placeholders of chunk-end force tokens included (prompt_compressor.py:777-780)
    scorer.chunk_end_tokens = set(cfg.chunk_end_tokens) | {token_map[c] for c in cfg.chunk_end_tokens if c in token_map}
    jobs = [(r, k, seg.text) for r in requests for k, seg in enumerate(r.text_segments) if seg.policy is not Policy.KEEP]
    subs = [substitute(text, token_map) if token_map else (text, None, None) for _, _, text in jobs]
    timings = requests[0].timings
    with timings("score"):
        scored = scorer.word_probs([new for new, _, _ in subs])
    with timings("units"):
        found: dict[int, dict[int, tuple[ReferenceWords, np.ndarray]]] = {}
        words_of = []
        for (r, k, text), wp, (_, starts, ends) in zip(jobs, scored, subs):
            words = reference_words(wp, tokenizer, force_tokens=list(cfg.force_tokens), token_map=token_map,
                                    token_to_word=cfg.token_to_word, force_reserve_digit=cfg.force_reserve_digit,
                                    start_map=starts, end_map=ends)
            found.setdefault(id(r), {})[k] = (words, strip_spans(words, text))
            words_of.append(words)
        # each word counted alone in the counting tokenizer (prompt_compressor.py:2401, tiktoken there)
        lengths = iter(compressor.count_tokens([p for w in words_of for p in w.pieces]))
        counts = {id(w): [next(lengths) for _ in w.pieces] for w in words_of}
    out = []
    for r in requests:
        per = found.get(id(r), {})
        with r.timings("select"):
            keeps, dropped = _select(cfg, r, per, counts)
        outcomes = []
        for k, seg in enumerate(r.text_segments):
            if k not in per:
                outcomes.append(keep_whole(seg))
                continue
            words, unit_index = per[k]
            units = Units(seg.text, words.spans[unit_index].reshape(-1, 2))
            mask = keeps[k][unit_index]
            if k in dropped:
                text = ""
            elif cfg.render == "tokens":
                text = rejoin(tokenizer, words, keeps[k])
            else:
                text = units.rebuild(mask)
            outcomes.append(SegmentOutcome(text, SegmentSelection("word", units.spans, mask)))
        out.append(outcomes)
    return out


def _select(cfg: Any, request: Request, per: dict, counts: dict) -> tuple[dict[int, np.ndarray], set[int]]:
    """Keep masks over each segment's words, and the segments the context-level filter dropped."""
    segments = request.text_segments
    pooled = [k for k in per if segments[k].policy is Policy.GLOBAL]
    info = request.extras.setdefault("llmlingua2", {"budget": "chunk", "rate": None})
    rate = info.get("rate")
    pooled_cost = sum(request.costs[k] for k in pooled)
    target = request.plan.pooled_target if rate is None else None  # target_tokens: the compressible text's share
    dropped: set[int] = set()
    use_filter = cfg.context_level_filter is not False and len(pooled) > 1  # prompt_compressor.py:801-802
    if use_filter:
        level = cfg.context_level_rate
        if level is None:  # prompt_compressor.py:819-830
            level = (rate + 1.0) / 2 if rate is not None and rate < 1.0 else 1.0
            if target is not None:
                level = min(2 * target / max(1, pooled_cost), 1.0)
        doc_probs = [sum(per[k][0].filter_probs) / len(per[k][0]) if len(per[k][0]) else 0.0 for k in pooled]
        kept_docs = context_keep(doc_probs, level)
        dropped = {k for k, kept in zip(pooled, kept_docs) if not kept}
        info.update(context_level_rate=level, dropped_segments=sorted(dropped))
    if target is not None:  # prompt_compressor.py:863-864 / 914-915: the rate over what is left
        left = sum(request.costs[k] for k in pooled if k not in dropped)
        rate = min(target / max(1, left), 1.0)
        info["rate"] = rate
    keeps: dict[int, np.ndarray] = {}
    for k, (words, _) in per.items():
        if k in dropped:
            keeps[k] = np.zeros(len(words), dtype=bool)
            continue
        seg_rate = rate if segments[k].policy is Policy.GLOBAL else segments[k].rate
        reduce_rate = max(0, 1 - seg_rate)
        keep = np.zeros(len(words), dtype=bool)
        n = counts[id(words)]
        for c in np.unique(words.chunk):
            idx = np.flatnonzero(words.chunk == c)
            keep[idx] = chunk_keep([words.probs[i] for i in idx], [words.pieces[i] for i in idx], [n[i] for i in idx],
                                   reduce_rate, list(cfg.force_tokens), cfg.drop_consecutive)
        keeps[k] = keep
    return keeps, dropped
