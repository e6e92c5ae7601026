"""Per-token self-information ``-log p(x_i | x_<i)`` from any causal LM.

- Batched: many texts go through the model in a few padded forward passes, grouped by length under a token budget.
- Windowed: texts longer than the model's window are scored chunk by chunk with a KV cache that keeps the last
  ``window - chunk`` positions, so memory stays bounded. For rotary models (Llama, Mistral, Qwen...) attention depends
  only on relative positions, so tokens keep their absolute positions and every token sees up to ``window`` tokens
  of context. Models with learned absolute positions (GPT-2) are scored on overlapping windows instead.
- Conditional: score a text given a prefix (e.g. the question), returning scores for the text tokens only.
- Memory-lean: the LM head runs on slices of the hidden states, so full ``(batch, length, vocab)`` float32 logits
  are never materialised.

Shapes: ``b`` batch, ``l`` sequence length, ``d`` hidden size, ``v`` vocabulary.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.compat import cache_kwargs, cache_length, is_rotary, keep_last_in_cache, new_cache, output_cache, prepend_cache
from ..models.loading import context_window


@dataclass
class TokenScores:
    """Scores of the tokens of one text: ``ids`` (n,), ``offsets`` (n, 2) character spans, ``scores`` (n,) in nats."""

    ids: np.ndarray
    offsets: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class CausalLMScorer:
    """Self-information of text tokens under a causal LM.

    Parameters
    ----------
    model, tokenizer:
        Any HF causal LM and its (fast) tokenizer.
    window:
        Longest context a scored token sees; defaults to the model's trained window.
    chunk_size:
        Tokens per forward pass when a text is longer than ``window``.
    num_sink:
        First tokens kept in the sliding cache as attention sinks (StreamingLLM).
    max_batch_tokens:
        Padded tokens per batched forward pass (trade memory for speed).
    max_pad_waste:
        Shortest sequence a batch may hold, as a share of its longest: ``1 - max_pad_waste``. None: 0.05 on a CPU,
        where a padded position costs as much as a real one and small batches run as fast per token (about 5% of
        LLMLingua's document ranking went to padding at 0.2), 0.2 on accelerators, where fewer larger batches win.
    start_token:
        Token the first text token is conditioned on (``"auto"``: ``<|endoftext|>`` if the vocabulary has it, else
        BOS, else EOS), so the first token gets a real score, as in Selective Context's reference code.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        window: int | None = None,
        chunk_size: int = 1024,
        max_batch_tokens: int = 8192,
        start_token: str | int | None = "auto",
        lm_head_chunk: int = 2048,
        num_sink: int = 4,
        max_pad_waste: float | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.window = int(window or context_window(model, tokenizer))
        self.chunk_size = max(1, min(int(chunk_size), self.window // 2))
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_pad_waste = float(max_pad_waste if max_pad_waste is not None else
                                   0.05 if getattr(getattr(model, "device", None), "type", None) == "cpu" else 0.2)
        self.lm_head_chunk = int(lm_head_chunk)
        self.num_sink = int(num_sink)
        self.start_id = self._start_id(start_token)
        self.rotary = is_rotary(model)
        config = model.config
        # models whose logits are not simply lm_head(hidden) get the plain forward
        self._split_head = not any(
            getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")
        ) and model.get_output_embeddings() is not None

    # ------------------------------------------------------------------------------------------------ tokens
    def _start_id(self, start_token: str | int | None) -> int | None:
        tok = self.tokenizer
        if start_token is None:
            return None
        if isinstance(start_token, int):
            return start_token
        if start_token != "auto":
            return tok.convert_tokens_to_ids(start_token)
        eot = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else None
        for candidate in (eot, tok.bos_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return None

    def tokenize(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, offsets)`` per text, without special tokens."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [
            (np.asarray(ids, dtype=np.int64), np.asarray(off, dtype=np.int64).reshape(-1, 2))
            for ids, off in zip(enc["input_ids"], enc["offset_mapping"])
        ]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    # ------------------------------------------------------------------------------------------------ scores
    def self_information(
        self, texts: Sequence[str], prefix: str | Sequence[str] | None = None
    ) -> list[TokenScores]:
        """Per-token ``-log p(token | start, prefix, earlier tokens)`` for each text (nats)."""
        texts = list(texts)
        encoded = self.tokenize(texts)
        prefixes = self._prefix_ids(prefix, len(texts))
        nll = self.token_nll([ids for ids, _ in encoded], prefixes)
        return [TokenScores(ids, off, s) for (ids, off), s in zip(encoded, nll)]

    def perplexity(self, texts: Sequence[str], prefix: str | Sequence[str] | None = None) -> np.ndarray:
        """exp(mean NLL) of each text (given its prefix); ``inf`` for empty texts."""
        out = []
        for scores in self.self_information(texts, prefix):
            out.append(float(np.exp(scores.scores.mean())) if len(scores) else math.inf)
        return np.asarray(out)

    def _prefix_ids(self, prefix: str | Sequence[str] | None, n: int) -> list[np.ndarray]:
        if prefix is None:
            return [np.zeros(0, dtype=np.int64)] * n
        if isinstance(prefix, str):
            ids = self.tokenize([prefix])[0][0]
            return [ids] * n
        if len(prefix) != n:
            raise ValueError(f"got {len(prefix)} prefixes for {n} texts")
        return [ids for ids, _ in self.tokenize(list(prefix))]

    @torch.inference_mode()
    def token_nll(self, ids: Sequence[np.ndarray], prefixes: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """NLL of every token of each id sequence given the start token and its prefix; float32 arrays."""
        prefixes = prefixes if prefixes is not None else [np.zeros(0, dtype=np.int64)] * len(ids)
        start = [self.start_id] if self.start_id is not None else []
        sequences, score_from = [], []
        for seq, pre in zip(ids, prefixes):
            full = np.concatenate([np.asarray(start, dtype=np.int64), pre, seq])
            sequences.append(full)
            score_from.append(len(start) + len(pre))
        results: list[np.ndarray | None] = [None] * len(ids)
        short = [i for i, s in enumerate(sequences) if len(s) <= self.window]
        for i in (i for i, s in enumerate(sequences) if len(s) > self.window):
            results[i] = self._nll_long(sequences[i])
        for batch in _length_batches([len(sequences[i]) for i in short], self.max_batch_tokens, self.max_pad_waste):
            idx = [short[j] for j in batch]
            for i, nll in zip(idx, self._nll_batch([sequences[i] for i in idx], [score_from[i] for i in idx])):
                results[i] = nll
        out = []
        for i, nll in enumerate(results):
            # nll[k] is the NLL of sequence token k+1; the very first token (no context) gets NaN
            full = np.concatenate([[np.nan], nll]).astype(np.float32)
            out.append(full[score_from[i] :])
        return out

    def _forward(self, input_ids, attention_mask=None, cache=None, position_ids=None):
        """Hidden states (or logits if the head cannot be split) ``(b, l, d|v)`` and the cache."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=cache is not None)
        if cache is not None:
            kwargs.update(cache_kwargs(self.model, cache))
        if self._split_head:
            out = self.model.base_model(**kwargs) if self.model.base_model is not self.model else None
            if out is not None:
                return out.last_hidden_state, output_cache(out), True
        out = self.model(**kwargs)
        return out.logits, output_cache(out), False

    def _nll_from(self, states: torch.Tensor, targets: torch.Tensor, is_hidden: bool) -> torch.Tensor:
        """NLL ``(b, l)`` of ``targets (b, l)`` from hidden states or logits ``(b, l, *)``, a slice at a time."""
        b, l = targets.shape
        nll = torch.empty(b, l, dtype=torch.float32, device=targets.device)
        head = self.model.get_output_embeddings() if is_hidden else None
        step = max(1, self.lm_head_chunk // max(1, b))
        for s in range(0, l, step):
            chunk = states[:, s : s + step]
            logits = head(chunk) if head is not None else chunk
            nll[:, s : s + step] = F.cross_entropy(
                logits.float().flatten(0, 1), targets[:, s : s + step].flatten(), reduction="none"
            ).view(b, -1)
        return nll

    def _nll_batch(self, sequences: list[np.ndarray], score_from: Sequence[int] | None = None) -> list[np.ndarray]:
        """NLL of tokens ``1..n-1`` of each sequence; tokens before ``score_from[i]`` get NaN (the LM head, a fifth
        of a small model's work per token, skips them: a prefix is only context)."""
        device = self.model.device
        lengths = [len(s) for s in sequences]
        longest = max(lengths)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, s in enumerate(sequences):
            input_ids[i, : len(s)] = torch.from_numpy(s)
            mask[i, : len(s)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        states, _, is_hidden = self._forward(input_ids, attention_mask=mask)
        # the LM head only runs where there is a next token to predict (no padding)
        first = np.maximum(np.asarray(score_from if score_from is not None else [0] * len(sequences)) - 1, 0)
        first = np.minimum(first, np.asarray(lengths) - 1)
        # target k of a row is its token k + 1: scored from first[i] up to the row's last token (no padding)
        targets = torch.arange(longest - 1)[None]
        valid = (targets >= torch.from_numpy(first)[:, None]) & mask[:, 1:].bool().cpu()
        valid = valid.to(device)
        nll = self._nll_from(states[:, :-1][valid][None], input_ids[:, 1:][valid][None], is_hidden)[0].cpu().numpy()
        bounds = np.cumsum([0] + [n - 1 - f for n, f in zip(lengths, first)])
        out = []
        for i, n in enumerate(lengths):
            row = np.full(n - 1, np.nan, np.float32)
            row[first[i] :] = nll[bounds[i] : bounds[i + 1]]
            out.append(row)
        return out

    def _nll_long(self, sequence: np.ndarray) -> np.ndarray:
        """Score one sequence longer than the window with bounded memory (StreamingLLM-style sliding cache).

        The cache keeps the first ``num_sink`` tokens (attention sinks: dropping them ruins the scores) and the most
        recent ``window - chunk - num_sink`` tokens. The sinks' keys/values are recomputed right before the recent
        block on every slide, so no token ever sees a relative distance beyond the window.
        """
        if not self.rotary:
            return self._nll_overlapping(sequence)
        device = self.model.device
        ids = torch.from_numpy(sequence).to(device)[None]
        n, chunk, sinks = ids.shape[1], self.chunk_size, self.num_sink
        recent = self.window - chunk - sinks  # cached positions besides the sinks
        nll = torch.empty(n - 1, dtype=torch.float32, device=device)
        cache = new_cache(self.model)
        prev_state = None  # the last position of the previous chunk predicts this chunk's first token
        from tqdm.auto import tqdm

        for s in tqdm(range(0, n, chunk), desc="scoring long text", unit="chunk", leave=False,
                      disable=None if n > 8 * chunk else True):  # None: shown on a terminal only
            e = min(n, s + chunk)
            positions = torch.arange(s, e, device=device)[None]
            states, cache, is_hidden = self._forward(ids[:, s:e], cache=cache, position_ids=positions)
            if prev_state is not None:
                nll[s - 1] = self._nll_from(prev_state, ids[:, s : s + 1], is_hidden)[0, 0]
            if e - s > 1:
                nll[s : e - 1] = self._nll_from(states[:, :-1], ids[:, s + 1 : e], is_hidden)[0]
            prev_state = states[:, -1:]
            if e < n and cache_length(cache) > recent + sinks:
                first_recent = e - recent
                sink_positions = torch.arange(first_recent - sinks, first_recent, device=device)[None]
                _, sink_cache, _ = self._forward(ids[:, :sinks], cache=new_cache(self.model), position_ids=sink_positions)
                keep_last_in_cache(cache, recent)
                prepend_cache(sink_cache, cache)
        return nll.cpu().numpy()

    def _nll_overlapping(self, sequence: np.ndarray) -> np.ndarray:
        """Absolute-position models: re-encode overlapping windows; each new token sees >= window/2 context."""
        device = self.model.device
        n, w = len(sequence), self.window
        context = w // 2
        nll = np.empty(n - 1, dtype=np.float32)
        begin, done = 0, 0  # targets 1..done are scored
        while done < n - 1:
            end = min(n, begin + w)
            ids = torch.from_numpy(sequence[begin:end]).to(device)[None]
            states, _, is_hidden = self._forward(ids)
            window_nll = self._nll_from(states[:, :-1], ids[:, 1:], is_hidden)[0].cpu().numpy()
            nll[done : end - 1] = window_nll[done - begin :]  # window_nll[k] scores token begin+k+1
            done = end - 1
            begin = end - context
        return nll


def _length_batches(lengths: Sequence[int], max_tokens: int, max_waste: float = 0.2) -> list[list[int]]:
    """Group indices, longest first, so that a padded batch holds at most ``max_tokens`` tokens and no sequence in
    it is shorter than ``1 - max_waste`` of the batch's longest (little compute is spent on padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (longest * (len(current) + 1) > max_tokens or lengths[i] < (1 - max_waste) * longest):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
