"""The hard (token-dropping) family's base: :class:`HardConfig`, :class:`HardCompressor` and its batched form.

:class:`HardCompressor` is the shared flow of token-dropping methods. It turns any input into a :class:`Prompt`,
checks the budget, plans it over segments (:func:`~mmcompress.budget.plan_budget`), asks the method for the new
text of each segment (:meth:`HardCompressor.compress_segments`), and does the token accounting and timing.

A new hard method implements one function: given the prompt and its budget plan, return a
:class:`SegmentOutcome` for every text segment.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..budget import BudgetPlan, plan_budget, select_under_budget
from ..compressor import BudgetConfig, Compressor, Timings
from ..errors import ConfigError, InvalidPromptError
from ..prompt import ImageSegment, Policy, Prompt, TextSegment
from ..results import CompressedPrompt, SegmentSelection


@dataclass
class SegmentOutcome:
    """The new text of one segment and which of its units were kept (an empty text drops the segment)."""

    text: str
    selection: SegmentSelection
    sep: str | None = None  # new separator before the segment (None: unchanged)


@dataclass
class HardConfig(BudgetConfig):
    """Fields of token-dropping methods: the budget (``rate`` / ``target_tokens``), and ``model``, the scorer (or,
    for baselines, only its tokenizer)."""

    model: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    target_tokenizer: str | None = None


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


class HardCompressor(Compressor):
    """Shared flow of token-dropping methods; subclasses implement :meth:`compress_segments`.

    Model objects can be passed directly (``model=``, ``tokenizer=``) instead of names, e.g. in tests.
    """

    family = "hard"
    config_class = HardConfig

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
            lm = load_language_model(self.config.model, self.config.device, self.config.dtype)
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
            if target_tokens is None and rate is None:
                rate, target_tokens = (None, self.config.target_tokens) if self.config.target_tokens else (self.config.rate, None)
            elif target_tokens is not None:
                rate = None
            text_indices = [i for i, s in enumerate(prompt.segments) if isinstance(s, TextSegment)]
            segments = [prompt.segments[i] for i in text_indices]
            costs = self.count_tokens([s.text for s in segments])
            plan = plan_budget(costs, [s.policy for s in segments], [s.rate for s in segments],
                               rate=rate, target_tokens=target_tokens)
        return Request(prompt, plan, text_indices, costs, timings)

    def compress_segments(self, request: Request) -> list[SegmentOutcome]:
        """Return one outcome per text segment of ``request.prompt`` (in order)."""
        raise NotImplementedError

    def finish(self, request: Request, outcomes: list[SegmentOutcome], seconds: float,
               target_tokenizer: Any = None) -> CompressedPrompt:
        """Assemble the compressed prompt and count its tokens."""
        timings = request.timings
        timings["compress"] = seconds
        prompt = request.prompt
        if len(outcomes) != len(request.text_indices):
            raise RuntimeError(f"{self.name} returned {len(outcomes)} outcomes for {len(request.text_indices)} segments")
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
        compressed = prompt.replace_segments(new_segments)
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

        prompts = list(prompts)
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
