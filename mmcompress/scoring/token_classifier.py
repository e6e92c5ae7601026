"""Word-level keep probabilities from any Hugging Face token classifier (LLMLingua-2's scorer).

- Words are the tokenizer's own pre-tokenised words, read from ``word_ids()`` of a fast tokenizer, so BERT
  (WordPiece, ``##`` continuations), RoBERTa (byte-level BPE, ``Ġ`` starts) and XLM-R (SentencePiece, ``▁`` starts)
  merge alike, with no model-name sniffing. Each word is a character span of the original text: nothing is
  re-detokenised, so casing and accents survive even with uncased models.
- Texts longer than the encoder's limit are cut into chunks of whole words at the last sentence end (``.``, a line
  break) inside the window, as the reference does; a word longer than a chunk is split across chunks.
- Chunks of all texts go through the encoder together, sorted by length into padded batches.
- A word's probability is the mean (or the first) of its tokens' ``softmax(logits)[keep_label]``.

Shapes: ``b`` chunks in a batch, ``l`` tokens, ``c`` labels.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl", "data2vec-text", "luke"}


@dataclass
class WordProbs:
    """The words of one text (character ``spans`` (n, 2)) and their keep probabilities ``probs`` (n,)."""

    text: str
    spans: np.ndarray
    probs: np.ndarray
    token_counts: np.ndarray  # classifier tokens per word
    # every classifier token of the text (whitespace-only ones included): id, character offsets (t, 2), keep
    # probability, the chunk it was classified in, and its word (-1: none); LLMLingua-2's reference selection regroups
    # tokens into words by its own rule (``mmcompress.hard.llmlingua2_reference``)
    token_ids: np.ndarray | None = None
    token_offsets: np.ndarray | None = None
    token_probs: np.ndarray | None = None
    token_chunk: np.ndarray | None = None
    token_word: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.spans)

    def words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


@dataclass
class _Tokenized:
    ids: np.ndarray  # (t,) classifier token ids without specials
    word_of_token: np.ndarray  # (t,) index into spans, -1 for tokens of whitespace-only words
    spans: np.ndarray  # (n, 2)
    offsets: np.ndarray | None = None  # (t, 2) character offsets of the tokens


class TokenClassifierScorer:
    """Keep probabilities of words under a token-classification model.

    Parameters
    ----------
    model, tokenizer:
        An ``AutoModelForTokenClassification`` and its *fast* tokenizer.
    max_length:
        Tokens per chunk including the special tokens (default: the encoder's limit, e.g. 512).
    batch_size:
        Chunks per forward pass.
    keep_label:
        Index of the "keep" class in the logits.
    token_to_word:
        ``"mean"`` or ``"first"``: how token probabilities become a word probability.
    chunk_end_tokens:
        Words after which a chunk may end (a line break in the text counts too).
    chunking:
        ``"words"``: chunks of whole words cut after the last sentence end in the window. ``"reference"``:
        llmlingua's ``__chunk_context`` (prompt_compressor.py:2230-2253, llmlingua 0.2.2): from the token one past
        the window backwards to the last token equal to a chunk-end token, so a chunk may hold one token more than
        the window, and then the closing special token is cut off (``TokenClfDataset``, utils.py:46-52).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int | None = None, batch_size: int = 32,
                 keep_label: int = 1, token_to_word: str = "mean", chunk_end_tokens: Sequence[str] = (".", "\n"),
                 chunking: str = "words"):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; word merging needs word_ids() "
                              "(load it with use_fast=True or convert it with the tokenizers library)")
        if token_to_word not in ("mean", "first"):
            raise ConfigError(f"token_to_word must be 'mean' or 'first', got {token_to_word!r}")
        n_labels = getattr(model.config, "num_labels", 2)
        if not 0 <= keep_label < n_labels:
            raise ConfigError(f"keep_label={keep_label} but the classifier has {n_labels} labels")
        # scoring is inference: a model passed in training mode would score through dropout, differently each call
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.keep_label, self.token_to_word = batch_size, keep_label, token_to_word
        self.chunk_end_tokens = set(chunk_end_tokens)
        if chunking not in ("words", "reference"):
            raise ConfigError(f"chunking must be 'words' or 'reference', got {chunking!r}")
        self.chunking = chunking
        self.prefix, self.suffix = _special_tokens(tokenizer)
        limit = encoder_limit(model, tokenizer)
        self.max_length = min(limit, max_length) if max_length else limit
        if self.max_length - len(self.prefix) - len(self.suffix) < 1:
            raise ConfigError(f"max_length={self.max_length} leaves no room for text between the special tokens")

    @classmethod
    def load(cls, name_or_path: str, device: str = "auto", dtype: Any = "auto",
             model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> TokenClassifierScorer:
        """Load a classifier folder, HF id or alias (``AutoModelForTokenClassification`` + fast tokenizer);
        ``model_kwargs`` go to ``from_pretrained``."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from ..errors import ModelNotFoundError
        from ..models.loading import pick_device, pick_dtype, resolve_model

        path = resolve_model(name_or_path)
        device = pick_device(device)
        try:
            model = AutoModelForTokenClassification.from_pretrained(
                path, **{"dtype": pick_dtype(dtype, device), **(model_kwargs or {})})
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise ModelNotFoundError(f"could not load token classifier {name_or_path!r} from {path}: {e}") from None
        if "device_map" not in (model_kwargs or {}):
            model.to(device)
        return cls(model.eval(), tokenizer, **kwargs)

    @property
    def chunk_tokens(self) -> int:
        """Text tokens per chunk (the limit minus the special tokens)."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    # ----------------------------------------------------------------------------------------------- words
    def tokenize(self, texts: Sequence[str]) -> list[_Tokenized]:
        """Classifier tokens of each text and the word each belongs to (by ``word_ids()``)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for i, text in enumerate(texts):
            ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
            offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            word_ids = enc.word_ids(i)
            out.append(_words_from_tokens(text, ids, offsets, word_ids))
        return out

    def chunks(self, tokenized: _Tokenized, text: str) -> list[tuple[int, int]]:
        """Token ranges ``[start, end)`` of at most :attr:`chunk_tokens`, cut after whole words, preferably after a
        sentence end."""
        if self.chunking == "reference":
            return self._reference_chunks(tokenized)
        n, limit = len(tokenized.ids), self.chunk_tokens
        if n <= limit:
            return [(0, n)] if n else []
        wot = tokenized.word_of_token
        ends = self._sentence_end_words(tokenized, text)
        out, start = [], 0
        while start < n:
            end = min(start + limit, n)
            if end < n:
                # last token boundary in the window that closes a word (the next token starts another word)
                closes = [t for t in range(end, start, -1) if wot[t - 1] != wot[t]]
                sentence = [t for t in closes if wot[t - 1] in ends]
                end = (sentence or closes or [end])[0]
            out.append((start, end))
            start = end
        return out

    def _reference_chunks(self, tokenized: _Tokenized) -> list[tuple[int, int]]:
        tokens = self.tokenizer.convert_ids_to_tokens([int(i) for i in tokenized.ids])
        n, max_len, start, out = len(tokens), self.chunk_tokens, 0, []
        while start < n:
            if start + max_len > n - 1:
                out.append((start, n))
                break
            end = start + max_len
            for j in range(0, end - start):
                if tokens[end - j] in self.chunk_end_tokens:
                    end -= j
                    break
            out.append((start, end + 1))
            start = end + 1
        return out

    def _sentence_end_words(self, tokenized: _Tokenized, text: str) -> set[int]:
        ends = set()
        for w, (s, e) in enumerate(tokenized.spans):
            nxt = tokenized.spans[w + 1][0] if w + 1 < len(tokenized.spans) else len(text)
            word = text[s:e]  # "France." is one word for XLM-R, whose "." token still ends the sentence
            if any(word.endswith(t) for t in self.chunk_end_tokens if t.strip()) or (
                    "\n" in self.chunk_end_tokens and "\n" in text[e:nxt]):
                ends.add(w)
        return ends

    # ------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def token_probs(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Keep probability of every token of each id sequence (each at most :attr:`chunk_tokens` long, or one more)."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(sequences)
        n_pre = len(self.prefix)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            # a sequence one token over the window (reference chunking) loses its closing special token
            rows = [(self.prefix + [int(t) for t in sequences[i]] + self.suffix)[: self.max_length] for i in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.as_tensor(r)
                mask[j, : len(r)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (b, l, c)
            probs = logits.float().softmax(-1)[..., self.keep_label].cpu().numpy()
            for j, i in enumerate(batch):
                out[i] = probs[j, n_pre : n_pre + len(sequences[i])]
        return out

    def word_probs(self, texts: Sequence[str]) -> list[WordProbs]:
        """Words and keep probabilities of each text; all chunks of all texts are classified in shared batches."""
        tokenized = self.tokenize(texts)
        jobs = [(i, s, e) for i, (tk, text) in enumerate(zip(tokenized, texts)) for s, e in self.chunks(tk, text)]
        probs = self.token_probs([tokenized[i].ids[s:e] for i, s, e in jobs])
        per_text = [np.zeros(len(tk.ids), np.float64) for tk in tokenized]
        chunk_of = [np.zeros(len(tk.ids), np.int64) for tk in tokenized]
        seen: dict[int, int] = {}
        for (i, s, e), p in zip(jobs, probs):
            per_text[i][s:e] = p
            chunk_of[i][s:e] = seen.get(i, 0)
            seen[i] = seen.get(i, 0) + 1
        return [self._to_words(tk, text, p, c) for tk, text, p, c in zip(tokenized, texts, per_text, chunk_of)]

    def _to_words(self, tk: _Tokenized, text: str, token_probs: np.ndarray, token_chunk: np.ndarray) -> WordProbs:
        n = len(tk.spans)
        valid = tk.word_of_token >= 0
        w, p = tk.word_of_token[valid], token_probs[valid]
        counts = np.bincount(w, minlength=n).astype(np.int64)
        if self.token_to_word == "mean":
            probs = np.bincount(w, weights=p, minlength=n) / np.maximum(counts, 1)
        else:
            first = np.full(n, -1)
            idx = np.arange(len(w))[::-1]
            first[w[::-1]] = idx  # reversed assignment leaves each word's first token
            probs = p[first]
        return WordProbs(text, tk.spans, probs.astype(np.float64), counts, tk.ids, tk.offsets, token_probs, token_chunk,
                         tk.word_of_token)


def _words_from_tokens(text: str, ids: np.ndarray, offsets: np.ndarray, word_ids: list[int | None]) -> _Tokenized:
    """Merge tokens into words by ``word_ids``. Words are character spans without whitespace: a tokenizer word that
    spans whitespace (a pre-tokenizer that splits on spaces only, facing a line break) is split there, each token going
    to the piece it starts in; tokens that cover only whitespace belong to no word."""
    spans: list[tuple[int, int]] = []
    word_of_token = np.full(len(ids), -1, dtype=np.int64)
    groups: list[list[int]] = []
    previous: Any = object()
    for t, wid in enumerate(word_ids):
        key = ("alone", t) if wid is None else wid  # a token outside any word stands alone
        if key != previous:
            groups.append([])
            previous = key
        groups[-1].append(t)
    for members in groups:
        start = int(min(offsets[t, 0] for t in members))
        end = int(max(offsets[t, 1] for t in members))
        for m in re.finditer(r"\S+", text[start:end]):
            s, e = start + m.start(), start + m.end()
            if spans:
                s = max(s, spans[-1][1])  # byte-level BPE offsets may overlap inside one multi-byte character
            if e <= s:
                continue
            spans.append((s, e))
            for t in members:
                ts, te = int(offsets[t, 0]), int(offsets[t, 1])
                if word_of_token[t] < 0 and te > s and ts < e and text[max(ts, s) : min(te, e)].strip():
                    word_of_token[t] = len(spans) - 1
    return _Tokenized(ids, word_of_token, np.asarray(spans, dtype=np.int64).reshape(-1, 2), offsets)


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids the encoder expects around a sequence: CLS/SEP (BERT), <s>/</s> (RoBERTa, XLM-R), else BOS/EOS."""
    pre = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    post = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([pre] if pre is not None else []), ([post] if post is not None else [])


def encoder_limit(model: Any, tokenizer: Any = None) -> int:
    """Longest input the encoder takes: its position table (less RoBERTa's padding offset), capped by the
    tokenizer's ``model_max_length`` when that is set."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in _ROBERTA_LIKE:
        limit -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 10**6:
        limit = min(limit, tok_limit)
    return int(limit)
