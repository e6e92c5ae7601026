"""The hard (token-dropping) family's base: :class:`HardConfig`, :class:`HardCompressor` and its batched form.

:class:`HardCompressor` is the shared flow of token-dropping methods. It turns any input into a :class:`Prompt`,
checks the budget, plans it over segments (:func:`~mmcompress.budget.plan_budget`), asks the method for the new
text of each segment (:meth:`HardCompressor.compress_segments`), and does the token accounting and timing.

A new hard method implements one function: given the prompt and its budget plan, return a
:class:`SegmentOutcome` for every text segment.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..budget import BudgetPlan, plan_budget, select_under_budget
from ..compressor import BudgetConfig, Compressor, Timings, batch_list
from ..errors import BudgetError, ConfigError, InvalidPromptError
from ..prompt import ImageSegment, Policy, Prompt, TextSegment
from ..results import CompressedPrompt, SegmentSelection


@dataclass
class SegmentOutcome:
    """The new text of one segment and which of its units were kept (an empty text drops the segment)."""

    text: str
    selection: SegmentSelection
    sep: str | None = None  # new separator before the segment (None: unchanged)
    # for the final budget check (:meth:`HardCompressor.fit_budget`): each unit's rank (higher survives longer) and
    # the segment's text for another keep mask over ``selection``'s units; an outcome without them is never shrunk
    priority: np.ndarray | None = None
    render: Callable[[np.ndarray], str] | None = None


def unit_outcome(units: Any, mask: np.ndarray, unit: str, priority: np.ndarray | None = None) -> SegmentOutcome:
    """The outcome of a segment rebuilt from its kept :class:`~mmcompress.text_units.Units`, ready to be shrunk."""
    mask = np.asarray(mask, dtype=bool)
    return SegmentOutcome(units.rebuild(mask), SegmentSelection(unit, units.spans, mask),
                          priority=None if priority is None else np.asarray(priority, dtype=np.float64),
                          render=units.rebuild)


@dataclass
class HardConfig(BudgetConfig):
    """Fields of token-dropping methods: the budget (``rate`` / ``target_tokens``), and ``model``, the scorer (or,
    for baselines, only its tokenizer).

    ``strict_budget``: after the method has selected, the rendered prompt is counted and, if re-tokenising the kept
    text made it longer than the target, its lowest-ranked kept units are dropped until it fits (the promise
    ``compressed_tokens <= target``). ``False`` leaves the method's own selection as it is (reference parity).
    """

    model: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    target_tokenizer: str | None = None
    strict_budget: bool = True
    model_kwargs: dict[str, Any] | None = None  # passed to from_pretrained (device_map, quantization_config...)


@dataclass
class Request:
    """One prompt to compress, after validation: what :meth:`HardCompressor.compress_segments` receives."""

    prompt: Prompt
    plan: BudgetPlan
    text_indices: list[int]  # positions of the text segments in prompt.segments
    costs: list[int]  # scorer tokens per text segment
    timings: Timings = field(default_factory=Timings)
    # methods that reorder segments (LongLLMLingua) set ``order``: the text segment shown in each text slot
    order: list[int] | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # method-specific details copied to the result

    @property
    def text_segments(self) -> list[TextSegment]:
        return [self.prompt.segments[i] for i in self.text_indices]

    def target(self, k: int) -> int | None:
        """Fixed target of text segment ``k`` (None: shares the pooled budget)."""
        return self.plan.segment_targets[k]

    def unit_budget(self, k: int) -> int:
        """The most tokens one unit of text segment ``k`` can take: its own target, or the pooled one."""
        own = self.plan.segment_targets[k]
        return int(own if own is not None else self.plan.pooled_target)

    def split(self, k: int, units: Any, token_offsets: np.ndarray) -> tuple[Any, np.ndarray]:
        """``units`` of text segment ``k`` with those larger than its budget cut into pieces that fit
        (:func:`~mmcompress.text_units.split_units`); returns the units and each one's original index."""
        from ..text_units import split_units

        return split_units(units, token_offsets, self.unit_budget(k), split_finer=True)


class HardCompressor(Compressor):
    """Shared flow of token-dropping methods; subclasses implement :meth:`compress_segments`.

    Model objects can be passed directly (``model=``, ``tokenizer=``) instead of names, e.g. in tests.
    """

    family = "hard"
    config_class = HardConfig

    @property
    def selection_unit(self) -> str:
        """What the method keeps or drops whole (token, word, phrase, sentence): a random baseline compared with it
        drops units of the same size (:func:`mmcompress.evaluation.harness.random_floors`)."""
        return str(getattr(self.config, "unit", "token"))

    def __init__(self, config: HardConfig | None = None, *, tokenizer: Any = None, **overrides: Any):
        model_obj = overrides.pop("model", None)
        if model_obj is not None and not isinstance(model_obj, str):
            self._model = model_obj
        else:
            self._model = None
            if model_obj is not None:
                overrides["model"] = model_obj
        super().__init__(config, **overrides)
        self._tokenizer = tokenizer
        self._load_seconds = 0.0  # one-time model loading, reported apart from the compression time
        if self._model is not None and self._tokenizer is None:
            raise ConfigError("pass tokenizer= together with a model object")

    # ------------------------------------------------------------------------------------------ model access
    @property
    def model(self):
        if self._model is None:
            from ..models import load_language_model

            t0 = time.perf_counter()
            lm = load_language_model(self.config.model, self.config.device, self.config.dtype,
                                     self.config.model_kwargs)
            self._model, self._tokenizer = lm.model, lm.tokenizer
            self._load_seconds += time.perf_counter() - t0
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..models import load_tokenizer

            t0 = time.perf_counter()
            self._tokenizer = load_tokenizer(self.config.model)
            self._load_seconds += time.perf_counter() - t0
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        texts = list(texts)
        if not texts:
            return []
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def tokenize_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, character offsets (n, 2))`` per text in the counting tokenizer."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(np.asarray(i), np.asarray(o).reshape(-1, 2)) for i, o in zip(enc["input_ids"], enc["offset_mapping"])]

    # ---------------------------------------------------------------------------------------------- compress
    def compress(
        self,
        prompt: Any,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        question: str | None = None,
        instruction: str | None = None,
        images: Sequence[Any] | None = None,
        target_tokenizer: Any = None,
    ) -> CompressedPrompt:
        """Compress ``prompt`` (a str, a list of documents, chat messages or a :class:`Prompt`).

        ``rate`` (fraction of tokens kept) or ``target_tokens`` override the config for this call; both count the
        whole prompt in the scorer's tokens, kept segments included.
        """
        request = self.prepare(prompt, rate=rate, target_tokens=target_tokens, question=question,
                                instruction=instruction, images=images)
        t0 = time.perf_counter()
        outcomes = self.compress_segments(request)
        return self.finish(request, outcomes, time.perf_counter() - t0, target_tokenizer)

    def prepare(self, prompt: Any, *, rate=None, target_tokens=None, question=None, instruction=None,
                images=None) -> Request:
        """Validate the input and plan the budget."""
        timings = Timings()
        with timings("prepare"):
            prompt = Prompt.coerce(prompt, question=question, instruction=instruction, images=images)
            if prompt.is_empty():
                raise InvalidPromptError("the prompt is empty: there is no text to compress")
            if target_tokens is not None and rate is not None:
                raise BudgetError(f"give either rate={rate} or target_tokens={target_tokens}, not both")
            if target_tokens is None and rate is None:
                rate, target_tokens = (None, self.config.target_tokens) if self.config.target_tokens else (self.config.rate, None)
            text_indices = [i for i, s in enumerate(prompt.segments) if isinstance(s, TextSegment)]
            segments = [prompt.segments[i] for i in text_indices]
            costs = self.count_tokens([s.text for s in segments])
            # the separators between segments cost tokens too (the rendered prompt is what is counted); without
            # strict_budget the target is the reference's, which counts the segments alone
            overhead = (self.count_tokens([prompt.text])[0] - sum(costs)
                        if len(prompt.segments) > 1 and self.config.strict_budget else 0)
            plan = plan_budget(costs, [s.policy for s in segments], [s.rate for s in segments],
                               rate=rate, target_tokens=target_tokens, overhead=overhead)
        return Request(prompt, plan, text_indices, costs, timings)

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        """Return one outcome per text segment of ``request.prompt`` (in order)."""
        raise NotImplementedError

    def finish(self, request: Request, outcomes: list[SegmentOutcome], seconds: float,
               target_tokenizer: Any = None) -> CompressedPrompt:
        """Assemble the compressed prompt (shrunk to the target if needed) and count its tokens."""
        timings = request.timings
        prompt = request.prompt
        if len(outcomes) != len(request.text_indices):
            raise RuntimeError(f"{self.name} returned {len(outcomes)} outcomes for {len(request.text_indices)} segments")
        t0 = time.perf_counter()
        if self.config.strict_budget:
            outcomes = self.fit_budget(request, outcomes)
        timings["compress"] = seconds + time.perf_counter() - t0
        compressed, selections = self._assemble(request, outcomes)
        with timings("count"):
            origin, after = self.count_tokens([prompt.text, compressed.text])
            target_counts = (None, None)
            tok = target_tokenizer or self.config.target_tokenizer
            if tok is not None:
                target_counts = _count_with(tok, [prompt.text, compressed.text])
        # "total" is this call's work; a one-time model load during the call is reported as "load" and left out
        timings["load"], self._load_seconds = self._load_seconds, 0.0
        timings["total"] = timings["prepare"] + timings["compress"] + timings["count"] - timings["load"]
        return CompressedPrompt(
            prompt=compressed, original=prompt, selections=selections, origin_tokens=origin,
            compressed_tokens=after, method=self.name, target_origin_tokens=target_counts[0],
            target_compressed_tokens=target_counts[1], timings=dict(timings), extras=dict(request.extras),
        )

    def _assemble(self, request: Request, outcomes: list[SegmentOutcome]) -> tuple[Prompt, list]:
        prompt = request.prompt
        by_index = dict(zip(request.text_indices, outcomes))
        shown = dict(zip(request.text_indices, request.text_indices))  # slot -> segment shown there
        if request.order is not None:
            shown = {slot: request.text_indices[k] for slot, k in zip(request.text_indices, request.order)}
        new_segments, selections = [], []
        for i, seg in enumerate(prompt.segments):
            if isinstance(seg, ImageSegment):
                new_segments.append(seg)
                selections.append(None)
                continue
            outcome = by_index[i]
            if seg.policy is Policy.KEEP and outcome.text != seg.text:
                raise RuntimeError(f"{self.name} changed a kept segment; this is a bug")
            selections.append(outcome.selection)
            j = shown[i]
            placed, placed_outcome = prompt.segments[j], by_index[j]
            if placed_outcome.text.strip():
                sep = placed.sep if placed_outcome.sep is None else placed_outcome.sep
                new_segments.append(placed.replace(text=placed_outcome.text, sep=sep))
        return prompt.replace_segments(new_segments), selections

    def fit_budget(self, request: Request, outcomes: list[SegmentOutcome]) -> list[SegmentOutcome]:
        """Count the rendered prompt and, if it has more tokens than the target, drop the fewest lowest-ranked kept
        units of the compressible segments that make it fit (re-tokenising kept pieces next to each other, and the
        separators between segments, can cost more than the units did apart): an exponential then a binary search
        over how many go, a count of the rendered prompt per probe. Raises :class:`BudgetError` when even dropping
        all of them does not fit (the kept segments and separators alone are over the target)."""
        target = request.plan.target_tokens
        text = self._assemble(request, outcomes)[0].text
        count = self.count_tokens([text])[0]
        shrinkable = [k for k, (seg, o) in enumerate(zip(request.text_segments, outcomes))
                      if seg.policy is not Policy.KEEP and o.render is not None and o.priority is not None]
        if count <= target:
            return outcomes if text.strip() else self._best_single_unit(request, outcomes, shrinkable, target)
        ranked = sorted(((np.nan_to_num(outcomes[k].priority[i], nan=-np.inf), k, -int(i)) for k in shrinkable
                         for i in np.flatnonzero(outcomes[k].selection.kept)))  # NaN ranks last; later units first

        def drop(n: int) -> tuple[list[SegmentOutcome], int]:
            masks = {k: outcomes[k].selection.kept.copy() for k in shrinkable}
            for _, k, i in ranked[:n]:
                masks[k][-i] = False
            trial = list(outcomes)
            for k, mask in masks.items():
                o = outcomes[k]
                if not np.array_equal(mask, o.selection.kept):
                    trial[k] = dataclasses.replace(o, text=o.render(mask),
                                                   selection=dataclasses.replace(o.selection, kept=mask))
            return trial, self.count_tokens([self._assemble(request, trial)[0].text])[0]

        low, high = 0, max(1, min(len(ranked), count - target))  # low: known not to fit
        trial, n_tokens = drop(high)
        while n_tokens > target and high < len(ranked):
            low, high = high, min(len(ranked), 2 * high)
            trial, n_tokens = drop(high)
        if n_tokens > target:
            raise BudgetError(
                f"the compressed prompt still takes {n_tokens} tokens, more than the target of {target}: the kept "
                "segments and the separators between segments alone need more; raise the budget or keep fewer segments"
            )
        best = trial
        while high - low > 1:
            mid = (low + high) // 2
            trial, n_tokens = drop(mid)
            if n_tokens <= target:
                best, high = trial, mid
            else:
                low = mid
        return best if self._assemble(request, best)[0].text.strip() else self._best_single_unit(
            request, best, shrinkable, target)

    def _best_single_unit(self, request: Request, outcomes: list[SegmentOutcome], shrinkable: list[int],
                          target: int, tries: int = 64) -> list[SegmentOutcome]:
        """Nothing was kept although a token is allowed: keep the best-ranked unit that fits on its own (units are
        costed inside their text; a piece of a word re-tokenised alone can cost more), or say that none does."""
        ranked = sorted(((-np.nan_to_num(outcomes[k].priority[i], nan=-np.inf), k, int(i)) for k in shrinkable
                         for i in range(len(outcomes[k].selection.kept))))
        for _, k, i in ranked[:tries]:
            trial = list(outcomes)
            for j in shrinkable:
                o = outcomes[j]
                mask = np.zeros(len(o.selection.kept), dtype=bool)
                if j == k:
                    mask[i] = True
                trial[j] = dataclasses.replace(o, text=o.render(mask), selection=dataclasses.replace(o.selection, kept=mask))
            if self.count_tokens([self._assemble(request, trial)[0].text])[0] <= target:
                return trial
        raise BudgetError(f"no part of the prompt fits in {target} token(s) once re-tokenised on its own; "
                          "raise the budget")


class BatchedHardCompressor(HardCompressor):
    """A hard compressor that does the model work of many prompts together: subclasses implement
    :meth:`_compress_requests` (outcomes for several prepared requests, e.g. all their sentences or chunks in shared
    forward passes); ``compress`` is the one-request case and ``compress_batch`` feeds it ``chunk`` prompts at a time.
    """

    batch_chunk = 64  # prompts per call of _compress_requests (a method whose batches grow faster sets fewer)

    def _compress_requests(self, requests: Sequence[Request]) -> list[list[SegmentOutcome]]:
        raise NotImplementedError

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        return self._compress_requests([request])[0]

    def compress_batch(self, prompts: Iterable[Any], *, progress: bool = False, chunk: int | None = None,
                       **kwargs: Any) -> list[CompressedPrompt]:
        """Compress many prompts, ``chunk`` (default :attr:`batch_chunk`) at a time through
        :meth:`_compress_requests`; each result's ``compress`` time is its share of its chunk's."""
        from tqdm.auto import tqdm

        prompts = batch_list(prompts)
        chunk = int(chunk or self.batch_chunk)
        target_tokenizer = kwargs.pop("target_tokenizer", None)
        results: list[CompressedPrompt] = []
        bar = tqdm(total=len(prompts), disable=not progress, desc=self.name)
        for start in range(0, len(prompts), chunk):
            requests = [self.prepare(p, **kwargs) for p in prompts[start : start + chunk]]
            t0 = time.perf_counter()
            outcomes = self._compress_requests(requests)
            share = (time.perf_counter() - t0) / len(requests)
            results += [self.finish(r, o, share, target_tokenizer) for r, o in zip(requests, outcomes)]
            bar.update(len(requests))
        bar.close()
        return results


def _count_with(tokenizer: Any, texts: list[str]) -> tuple[int, int]:
    if isinstance(tokenizer, str):
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return len(ids[0]), len(ids[1])


def keep_whole(segment: TextSegment) -> SegmentOutcome:
    return SegmentOutcome(segment.text, SegmentSelection.whole(segment.text, True))


def allocate(
    request: Request,
    scores: Sequence[np.ndarray | None],
    costs: Sequence[np.ndarray | None],
    force: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray | None]:
    """Keep masks for every text segment under the request's plan.

    ``scores[k]`` / ``costs[k]`` are per-unit arrays for text segment ``k`` (``None`` for kept segments). Segments
    with their own rate are selected on their own; global-rate segments share the pooled budget, ranked together.
    Costs are rescaled so that each segment's unit costs add up to its token count.
    """
    force = force if force is not None else [None] * len(scores)
    masks: list[np.ndarray | None] = [None] * len(scores)
    pooled = []
    for k, seg in enumerate(request.text_segments):
        if seg.policy is Policy.KEEP:
            continue
        c = _rescale(costs[k], request.costs[k])
        if seg.policy is Policy.OWN_RATE:
            masks[k] = select_under_budget(scores[k], c, request.target(k), force[k])
        else:
            pooled.append(k)
    if pooled:
        cat = lambda xs: np.concatenate([np.asarray(x, dtype=np.float64) for x in xs]) if xs else np.zeros(0)  # noqa: E731
        all_scores = cat([scores[k] for k in pooled])
        all_costs = cat([_rescale(costs[k], request.costs[k]) for k in pooled])
        all_force = np.concatenate([
            np.zeros(len(scores[k]), bool) if force[k] is None else np.asarray(force[k], bool) for k in pooled
        ])
        mask = select_under_budget(all_scores, all_costs, request.plan.pooled_target, all_force)
        bounds = np.cumsum([0] + [len(scores[k]) for k in pooled])
        for j, k in enumerate(pooled):
            masks[k] = mask[bounds[j] : bounds[j + 1]]
    return masks


def _rescale(costs: np.ndarray, total: int) -> np.ndarray:
    costs = np.asarray(costs, dtype=np.float64)
    s = costs.sum()
    return costs * (total / s) if s > 0 else costs
