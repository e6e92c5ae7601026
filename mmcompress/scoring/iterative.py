"""Iterative token-level prompt compression (ITPC, Algorithm 2 of the LLMLingua paper), as llmlingua 0.2.2 runs it.

The context is cut into windows of ``iterative_size`` tokens. Window ``k`` is scored by the causal LM *given the
tokens already kept* in windows ``< k`` (their keys/values are cached, so each step feeds only the previous window,
compressed, and the new one), a threshold is taken from the score distribution at the window's keep-rate, and the
window's tokens scoring above it are kept. Dropping tokens therefore changes how later tokens are scored: this is
what makes the method iterative.

With ``compare=True`` (LongLLMLingua's contrastive perplexity) a second stream runs the same steps without the
question prefix, and a token's score is ``nll(x | context) - nll(x | question, context)``: how much the question
makes it *more* predictable.

Faithful points (each matters for agreement with the reference, see ``benchmarks/llmlingua_parity.py``):

- windows follow the reference plan (:func:`window_plan`), including its one-token offset and per-document
  sub-windows with their own rates;
- a window's threshold is the ``rate`` quantile of the scores of *all* tokens known so far, not of the window alone;
- ``alignment="next"``: as in the reference, token ``j`` is kept when the loss of the *next* kept token is above
  the threshold (its loss vector is shifted by one against the ids). ``"token"`` scores each token by its own loss;
- ``first_pass="full"``: as in the reference, one pass over the whole (uncompressed) context gives every token a
  starting score, so early windows' thresholds see the whole prompt's distribution. ``"window"`` skips that pass
  (one forward pass over the context saved); the first window's scores, which are given the uncompressed prefix as
  in that pass, stand in for the tokens not scored yet;
- ``threshold_scope="prompt"``: as in the reference, the threshold is a quantile over every token scored so far,
  kept ones included; as kept tokens score high, later windows drop more than their rate and the prompt lands
  below it (0.31 for a requested 0.33 on the golden rows). ``"window"`` takes the quantile over the window's own
  tokens, so each window keeps its rate;
- ``compress_tail=False``: as in the reference, the last partial window (and any prompt shorter than one window) is
  never compressed, so short prompts miss the rate (llmlingua issue #196). ``True`` compresses it too.

``reuse_prefix=True`` (the default) saves part of the reference's re-feed without changing a score. The reference
keeps the cache up to the start of the window just decided and re-feeds that window's kept tokens with the next one,
because dropping a token changes how every later token is scored. The tokens *before the window's first dropped
token* keep their context, so a re-feed gives them the same keys, values and scores: they stay cached, and the
re-feed starts at the token before the first drop (its score, the loss of the token after it, changes). Where
LongLLMLingua's dynamic ratio gives the best-ranked document a keep-rate of 1 nothing there is dropped, and its
token-level step feeds a fifth less (``benchmarks/reuse_prefix_check.py``: the same outputs on 10 golden rows).
Before a step that evicts, the reference re-feeds after the eviction, and so does this. ``reuse_prefix=False`` feeds
as the reference does.

``batch_streams=True`` (for GPUs, where a small model's forward pass is bound by kernel launches): from the
second window on, the two contrastive streams feed the same tokens, so they go through the model as one batch of
two rows, the second row's cache left-padded (masked) where the first holds the question. The scores are the same
up to float rounding; it is off by default, and inputs longer than the window (cache eviction) run the streams apart.

Long inputs: when the cache would pass the model's window, the oldest cached positions after the first
``sink + start`` (attention sinks and the question prefix) are evicted, as the reference does, so memory stays
bounded by the window whatever the input length.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.compat import new_cache
from .causal_lm import CausalLMScorer

Window = list[tuple[int, float]]  # sub-windows: (length in tokens, keep-rate)


def window_plan(lengths: Sequence[int], rates: Sequence[float], iterative_size: int) -> list[Window]:
    """Windows of ``iterative_size`` tokens over pieces of ``lengths`` tokens, each piece with its keep-rate.

    A window that spans a piece boundary is split into sub-windows, each thresholded at its own piece's rate. Mirrors
    llmlingua's ``get_dynamic_compression_ratio`` (including its start at offset 1).
    """
    size = int(iterative_size)
    plan: list[Window] = []
    current: Window = []
    filled = 1
    for length, rate in zip(lengths, rates):
        rate = float(min(1.0, max(0.0, rate)))
        if filled + length >= size:
            current.append((size - filled, rate))
            plan.append(current)
            filled = filled + length - size
            if filled > size:
                k = filled // size
                plan.extend([[(size, rate)] for _ in range(k)])
                filled -= k * size
            current = [(filled, rate)] if filled else []
        else:
            filled += length
            current.append((int(length), rate))
    if current:
        plan.append(current)
    return plan


def rate_threshold(values: np.ndarray, rate: float, weights: np.ndarray | None = None) -> float:
    """The value above which about ``rate`` of ``values`` lie (the reference's ``int(n * rate) - 1``-th largest).

    ``weights`` count a value several times (a stand-in for values not computed yet); NaN values are ignored.
    """
    if rate >= 1.0:
        return float("-inf")
    ok = ~np.isnan(values)
    values = values[ok]
    if len(values) == 0:
        return float("-inf")
    if weights is None:
        k = max(0, min(len(values) - 1, int(len(values) * rate) - 1))
        # the k-th largest, i.e. index k of the descending sort
        return float(np.partition(values, len(values) - 1 - k)[len(values) - 1 - k])
    weights = np.asarray(weights, np.float64)[ok]
    order = np.argsort(-values, kind="stable")
    cum = np.cumsum(weights[order])
    k = max(0.0, min(cum[-1] - 1, int(cum[-1] * rate) - 1))
    return float(values[order[min(len(order) - 1, int(np.searchsorted(cum, k + 1 - 1e-9)))]])


@dataclass
class IterativeResult:
    """``kept``: mask over the input ids. For inspection: ``thresholds`` and ``windows`` (original positions
    ``[lo, hi)`` each sub-window decided) per sub-window, the final ``values`` (and ``self_values`` with
    ``compare``) attached to each position, ``forward_tokens`` fed to the model and the longest cache seen."""

    kept: np.ndarray
    thresholds: list[float] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)
    values: np.ndarray | None = None
    self_values: np.ndarray | None = None
    forward_tokens: int = 0
    max_cache: int = 0


class IterativeCompressor:
    """Runs ITPC on one token sequence with a causal LM (the scorer's model, window and LM-head slicing).

    ``max_position``: longest sequence the model sees (defaults to the scorer's window). ``sink``: cached positions
    kept at the front when evicting (the reference's ``cache_bos_num``; the question prefix is kept as well).
    """

    def __init__(self, scorer: CausalLMScorer, *, iterative_size: int = 200, max_position: int | None = None,
                 sink: int = 10, first_pass: str = "window", alignment: str = "next", compress_tail: bool = False,
                 threshold_scope: str = "prompt", batch_streams: bool = False, reuse_prefix: bool = True):
        if first_pass not in ("full", "window"):
            raise ValueError(f"first_pass must be 'full' or 'window', got {first_pass!r}")
        if alignment not in ("next", "token"):
            raise ValueError(f"alignment must be 'next' or 'token', got {alignment!r}")
        self.scorer = scorer
        self.size = int(iterative_size)
        self.max_position = int(max_position or scorer.window)
        if self.max_position < 2 * self.size + 2:
            raise ValueError(f"iterative_size={self.size} is too large for a model window of {self.max_position} "
                             f"tokens; use at most {(self.max_position - 2) // 2}")
        self.sink = int(sink)
        self.first_pass = first_pass
        self.alignment = alignment
        self.compress_tail = compress_tail
        if threshold_scope not in ("prompt", "window"):
            raise ValueError(f"threshold_scope must be 'prompt' or 'window', got {threshold_scope!r}")
        self.threshold_scope = threshold_scope
        self.batch_streams = bool(batch_streams)
        self.reuse_prefix = bool(reuse_prefix)

    # ------------------------------------------------------------------------------------------------ model
    @torch.inference_mode()
    def _feed(self, ids: np.ndarray, cache):
        """Feed ``ids`` after ``cache``; returns the NLL of ``ids[1:]`` given everything before (float32) and the cache."""
        scorer = self.scorer
        t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(scorer.model.device)[None]
        cache = cache if cache is not None else new_cache(scorer.model)
        states, cache, is_hidden = scorer._forward(t, cache=cache)
        if t.shape[1] < 2:
            return np.zeros(0, np.float32), cache
        nll = scorer._nll_from(states[:, :-1], t[:, 1:], is_hidden)[0]
        return nll.float().cpu().numpy(), cache

    @torch.inference_mode()
    def _feed_pair(self, ids: np.ndarray, pair, pad: int):
        """Feed the same ``ids`` to both contrastive streams in one batch: row 0 (with the question) after its cache,
        row 1 after its own, left-padded by ``pad`` masked positions. Returns both streams' NLLs and the cache."""
        scorer = self.scorer
        device = scorer.model.device
        t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device)[None].expand(2, -1)
        past, n = _cache_len(pair), t.shape[1]
        mask = torch.ones(2, past + n, dtype=torch.long, device=device)
        mask[1, :pad] = 0
        positions = torch.arange(n, device=device)[None] + torch.tensor([[past], [past - pad]], device=device)
        states, pair, is_hidden = scorer._forward(t, attention_mask=mask, cache=pair, position_ids=positions)
        if n < 2:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), pair
        nll = scorer._nll_from(states[:, :-1], t[:, 1:], is_hidden).float().cpu().numpy()
        return nll[0], nll[1], pair

    def first_pass_losses(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Own-token NLL of whole sequences (first token NaN), batched; long ones are scored with bounded memory."""
        from .ranking import _own_losses

        return _own_losses(self.scorer, [np.asarray(s, np.int64) for s in sequences])

    # ------------------------------------------------------------------------------------------------- run
    def run(self, ids: np.ndarray, start: int, plan: list[Window], *, compare: bool = False,
            force: np.ndarray | None = None, split_id: int | None = None, split_flags: np.ndarray | None = None,
            initial: tuple[np.ndarray, np.ndarray | None] | None = None) -> IterativeResult:
        """Compress ``ids`` (a prefix of ``start`` tokens that is never dropped, then the context).

        ``force``: tokens that must survive (kept segments). ``split_id`` / ``split_flags``: the reference's
        ``keep_split``: flagged line breaks always survive, and a kept line break right after another kept one is
        dropped unless flagged. ``initial``: own-token losses from :meth:`first_pass_losses` for the full sequence
        (and for the context alone when ``compare``), computed in a batch across prompts by the caller.
        """
        ids = np.asarray(ids, dtype=np.int64)
        n, size = len(ids), self.size
        kept = np.ones(n, dtype=bool)
        result = IterativeResult(kept)
        if n == 0 or not plan:
            return result
        # val[p]: the score attached to position p ("next": loss of the next kept token; "token": its own loss)
        val = np.full(n, np.nan, np.float32)
        sval = np.full(n, np.nan, np.float32) if compare else None
        if self.first_pass == "full":
            own, self_own = initial if initial is not None else self._initial(ids, start, compare)
            self._attach(val, np.arange(n), own)
            if compare:
                self._attach(sval, np.arange(start, n), self_own)
        result.values, result.self_values = val, sval
        comp = np.arange(n)  # compressed position -> original position
        end = min(size + start, n)
        cache = scache = None
        # batch_streams: one cache of two rows once both streams feed the same tokens (never with eviction)
        pair, pad = None, 0
        pairable = compare and self.batch_streams and n + 1 <= self.max_position
        cached = scached = 0  # compressed positions [0, cached) (resp. [start, scached)) are in the caches
        popped = 0  # positions evicted from the caches (they stay in the output)
        standin = np.zeros(0, np.float32)  # first_pass="window": scores standing in for tokens not scored yet
        step = 0
        while True:
            m = len(comp)
            tail = False
            if end > m:
                if not self.compress_tail or end - size >= m - 1:
                    break
                tail = True
            stop = min(end, m)
            extra = 1 if (self.first_pass == "window" and self.alignment == "next" and stop < m) else 0
            # ---- evict the oldest cached positions once the model window is reached
            visible = stop + extra - popped
            if visible > self.max_position and cache is not None:
                e = visible - self.max_position
                s = min(self.sink + start, self.max_position)
                _drop_from_cache(cache, s, e)
                if compare and scache is not None:
                    _drop_from_cache(scache, max(0, min(s, _cache_len(scache) - e)), e)
                popped += e
            # ---- score: the previous window (compressed) and this one, given the cached kept tokens
            if pairable and pair is None and cache is not None and cached == max(scached, start):
                pair, pad = _pair_caches(cache, scache)
                cache = scache = None
            if pair is not None:
                feed = comp[cached : stop + extra]
                nll, snll, pair = self._feed_pair(ids[feed], pair, pad)
                result.forward_tokens += 2 * len(feed)
                result.max_cache = max(result.max_cache, _cache_len(pair))
                self._store(val, feed, nll)
                self._store(sval, feed, snll)
            elif not (step == 0 and self.first_pass == "full"):
                feed = comp[cached : stop + extra]
                nll, cache = self._feed(ids[feed], cache)
                result.forward_tokens += len(feed)
                result.max_cache = max(result.max_cache, _cache_len(cache))
                self._store(val, feed, nll)
                if compare:
                    sfeed = comp[max(scached, start) : stop + extra]
                    snll, scache = self._feed(ids[sfeed], scache)
                    result.forward_tokens += len(sfeed)
                    self._store(sval, sfeed, snll)
            # the reference keeps the cache up to the start of this window and re-feeds its kept part with the next one
            keep_upto = (stop - size) if step else start
            if self.alignment == "token":  # re-feed one more token so the window's first kept token is re-scored
                keep_upto = max(0, keep_upto - 1)
            fed_upto = stop + extra  # compressed positions [0, fed_upto) are in the cache (less any evicted)
            first_drop = n  # the first position this step drops
            # ---- threshold and keep, sub-window by sub-window
            windows = plan[step] if step < len(plan) else [(size, plan[-1][-1][1])]
            step_lo = max(end - size, start)
            for delta, rate in windows:
                m = len(comp)
                a = end - size
                b = a + delta
                if a < start:  # a prompt shorter than one window
                    if a < 0 and not self.compress_tail:  # the reference keeps it whole
                        end = b + size
                        continue
                    if self.compress_tail:
                        a, b = start, b + (start - a)
                lo, hi = max(a, start), min(b, m)
                scores = self._scores(comp, start, val, sval)
                if step == 0 and self.first_pass == "window" and not len(standin):
                    # the first window is scored given the uncompressed prefix, as the reference's first pass
                    # scores every token: its scores stand in for the tokens not scored yet
                    standin = scores[step_lo:min(stop, m)]
                    standin = standin[~np.isnan(standin)].copy()
                pool, weights = scores, None
                unknown = int(np.isnan(scores[stop:]).sum()) if self.first_pass == "window" else 0
                if unknown and len(standin):
                    pool = np.concatenate([scores, standin])
                    weights = np.concatenate([np.ones(len(scores)), np.full(len(standin), unknown / len(standin))])
                if self.threshold_scope == "window":
                    thr = _window_threshold(scores[lo:hi] if hi > lo else scores[:0], rate)
                else:
                    thr = rate_threshold(pool, rate, weights)
                result.thresholds.append(thr)
                dropped = 0
                if hi > lo:
                    window = np.arange(lo, hi)
                    result.windows.append((int(comp[lo]), int(comp[hi - 1]) + 1))
                    ws = scores[window]
                    with np.errstate(invalid="ignore"):
                        need = ~(ws <= thr)  # NaN (never scored) is kept
                    need[window == m - 1] = True  # the reference always keeps the last token
                    pos = comp[window]
                    if force is not None:
                        need |= force[pos]
                    if split_flags is not None:
                        need |= split_flags[pos].astype(bool)
                        last = -1
                        for i, p in enumerate(pos):
                            if not need[i]:
                                continue
                            if ids[p] == split_id and last == split_id and not split_flags[p]:
                                need[i] = False
                            else:
                                last = ids[p]
                    kept[pos[~need]] = False
                    dropped = int((~need).sum())
                    if dropped:
                        first_drop = min(first_drop, int(pos[~need][0]))
                comp = np.flatnonzero(kept)
                end = b - dropped + size
            if self.reuse_prefix and end + 1 - popped <= self.max_position:
                # tokens before this step's first drop keep their context, so a re-feed would give them the same keys,
                # values and scores: keep them cached and re-feed from the token before the first drop (whose score,
                # the loss of the token after it, changes). Not when the next step evicts: the reference re-feeds them
                # after the eviction, without the evicted tokens in their context.
                same = int(np.searchsorted(comp, first_drop)) if first_drop < n else fed_upto
                keep_upto = max(keep_upto, min(same, fed_upto) - 1)
            if pair is not None:  # both rows end at the same position: the first stream's crop
                pair, cached = _crop(pair, keep_upto, popped, start)
                scached = cached
            cache, cached = _crop(cache, keep_upto, popped, start) if pair is None else (None, cached)
            if compare and pair is None:
                scache, scached = _crop(scache, keep_upto, popped, start, offset=start)
            step += 1
            if tail:
                break
        return result

    # ------------------------------------------------------------------------------------------------ helpers
    def _initial(self, ids, start, compare):
        seqs = [ids] + ([ids[start:]] if compare else [])
        losses = self.first_pass_losses(seqs)
        return losses[0], (losses[1] if compare else None)

    def _attach(self, val: np.ndarray, positions: np.ndarray, own: np.ndarray) -> None:
        """Store own-token losses of a contiguous run of positions (``own[0]`` is the first token's, NaN)."""
        if self.alignment == "token":
            val[positions] = own
        else:  # the loss of token k+1 is attached to token k
            val[positions[:-1]] = own[1:]

    def _store(self, val: np.ndarray, fed: np.ndarray, nll: np.ndarray) -> None:
        """``nll[k]`` is the loss of ``fed[k + 1]`` given everything before it."""
        if len(nll) == 0:
            return
        if self.alignment == "token":
            val[fed[1:]] = nll
        else:
            val[fed[:-1]] = nll

    def _scores(self, comp, start, val, sval) -> np.ndarray:
        """Score of every kept token, by compressed position (NaN: not scored yet, or the question prefix)."""
        if sval is None:
            return val[comp]
        scores = sval[comp] - val[comp]
        scores[:start] = np.nan
        return scores


def _window_threshold(values: np.ndarray, rate: float) -> float:
    """Keep ``round(rate * n)`` of a window's scored tokens: the value just below them."""
    values = values[~np.isnan(values)]
    k = int(round(rate * len(values)))
    if rate >= 1.0 or k >= len(values):
        return float("-inf")
    return float(np.partition(values, len(values) - 1 - k)[len(values) - 1 - k])


def _cache_len(cache) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def _crop(cache, upto: int, popped: int, start: int, offset: int = 0):
    """Crop a cache to the compressed positions before ``upto`` (``offset``: where the stream starts)."""
    if cache is None:
        return None, offset
    visible = max(0, upto - popped - offset)
    if visible <= 0:
        return None, offset
    remove = _cache_len(cache) - visible
    if remove > 0:
        cache.crop(-remove)  # a negative count removes that many positions (transformers 4.x and 5.x alike)
    return cache, upto


def _pair_caches(cache, scache):
    """One cache of two rows: ``cache`` (with the question), then ``scache`` left-padded to its length (in place of
    ``cache``). Returns it and the padding."""
    pad = _cache_len(cache) - _cache_len(scache)
    rows = scache.layers if scache is not None else [None] * len(cache.layers)
    for layer, other in zip(cache.layers, rows):
        for name in ("keys", "values"):
            first = getattr(layer, name)
            blank = first.new_zeros(first.shape[:-2] + (pad,) + first.shape[-1:])
            second = blank if other is None else torch.cat([blank, getattr(other, name)], dim=-2)
            setattr(layer, name, torch.cat([first, second], dim=0))
    return cache, pad


def _drop_from_cache(cache, s: int, e: int) -> None:
    """Evict ``e`` cached positions starting at ``s`` (sliding window with ``s`` sink positions), in place."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or not layer.keys.numel():
            continue
        layer.keys = torch.cat([layer.keys[..., :s, :], layer.keys[..., s + e :, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :s, :], layer.values[..., s + e :, :]], dim=-2)
