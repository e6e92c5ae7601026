"""LLMLingua-2 (Pan et al., Findings of ACL 2024, arXiv 2403.12968; reference: microsoft/LLMLingua,
``PromptCompressor.compress_prompt_llmlingua2``).

A bidirectional encoder with a token-classification head labels every word keep or drop. No causal LM runs, so it is
fast and question-agnostic.

``budget: chunk`` (default) selects as the reference does (restated in :mod:`.llmlingua2_reference`, with file:line
citations): llmlingua's chunks, words and force-token placeholders, each chunk thresholded on its own at the percentile
``int(100 * (1 - rate) + 1)`` of its token-weighted word probabilities, the context-level filter (on by default, as
``compress_prompt`` passes it) dropping whole documents first. ``budget: global`` ranks the words of all documents
together under one budget in the counting tokenizer (``model``, SmolLM2 by default), for a hard token budget across
documents; there, words come from the tokenizer's ``word_ids()``, forced words rank first and the budget still holds,
and the filter only lowers the rank of filtered documents.

In both modes, unlike the reference: any BERT, RoBERTa or XLM-R style classifier works (the reference knows three
model names and raises for the rest); the output keeps the original text of the kept words (``render: spans``; the
reference re-joins tokens with ``convert_tokens_to_string``, which lowercases with uncased models and loses line
breaks - ``render: tokens`` does that); instructions, questions and kept segments are never touched; many prompts
share the encoder's batches; XLM-R style encoders get their own ``<s>``/``</s>`` around each chunk (the reference's
``TokenClfDataset`` writes BERT's ``[CLS]``/``[SEP]``, which XLM-R's vocabulary reads as ``<unk>``, utils.py:13-40).

The default classifier is the one the ``llmlingua2`` training recipe produced last (see
:func:`default_classifier`); pass ``classifier=`` a folder or HF id to use another (e.g.
``microsoft/llmlingua-2-xlm-roberta-large-meetingbank`` when it is in the local HF cache).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import BatchedHardCompressor, HardConfig, Request, SegmentOutcome, allocate, keep_whole, unit_outcome
from .llmlingua2_reference import compress_chunked
from ..errors import ConfigError
from ..prompt import Policy
from ..registry import register_compressor
from ..scoring.token_classifier import TokenClassifierScorer, WordProbs
from ..text_units import Units, aggregate_scores

DEFAULT_CLASSIFIER_ENV = "MMCOMPRESS_LLMLINGUA2_CLASSIFIER"
_DIGIT = re.compile(r"\d")
_FORCED_SCORE = 2.0  # above any probability


@dataclass
class LLMLingua2Config(HardConfig):
    """``classifier``: token-classification model (folder, HF id or alias); None = :func:`default_classifier`.
    ``model`` only provides the tokenizer that counts the budget.

    ``budget``: ``chunk`` (default, llmlingua's rule): each chunk of at most the encoder's limit keeps its words above
    the percentile ``int(100 * (1 - rate) + 1)`` of its word probabilities weighted by each word's tokens; ``rate`` is
    the kept fraction of every compressible segment (instructions, questions and kept segments come on top, as in
    llmlingua, which leaves them out), ``target_tokens`` becomes that rate over the compressible text. No hard promise
    on the count. ``global``: the words of all documents ranked together under one budget in the counting tokenizer
    (the prompt-wide rate or ``target_tokens`` is met, kept segments included) - use it when the prompt must fit a
    hard token budget across documents.

    ``token_to_word``: mean | first. ``force_tokens``: tokens kept (chunk: a word whose first token is one gets
    probability 1, a force token the classifier splits is replaced by a ``[NEWi]`` placeholder as llmlingua does;
    global: each word overlapping an occurrence ranks first, the budget still holds). ``force_reserve_digit``: tokens
    (chunk) or words (global) holding a digit are forced. ``drop_consecutive``: drop a forced token that repeats with
    nothing kept in between. ``context_level_filter`` (default: on for ``chunk`` when two or more documents share the
    rate, as llmlingua's ``compress_prompt``; off for ``global``): drop whole documents by mean word probability first,
    keeping ``context_level_rate`` of them (default ``(rate + 1) / 2``), and apply the rate to the rest (``global``
    only lowers their words' rank). ``render``: ``spans`` (default) keeps the original text of the kept words (casing,
    accents and line breaks survive); ``tokens`` re-joins the kept words with the classifier's
    ``convert_tokens_to_string`` as llmlingua does (lowercased with uncased models).
    """

    classifier: str | None = None
    token_to_word: str = "mean"
    force_tokens: list[str] = field(default_factory=list)
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    max_seq_len: int | None = None
    batch_size: int = 32
    keep_label: int = 1
    chunk_end_tokens: list[str] = field(default_factory=lambda: [".", "\n"])
    context_level_filter: bool | None = None
    context_level_rate: float | None = None
    budget: str = "chunk"
    render: str = "spans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget not in ("chunk", "global"):
            raise ConfigError(f"budget must be 'chunk' (llmlingua's per-chunk threshold) or 'global', got {self.budget!r}")
        if self.render not in ("spans", "tokens"):
            raise ConfigError(f"render must be 'spans' or 'tokens', got {self.render!r}")
        if self.token_to_word not in ("mean", "first"):
            raise ConfigError(f"token_to_word must be 'mean' or 'first', got {self.token_to_word!r}")
        if isinstance(self.force_tokens, str) or not all(isinstance(t, str) and t for t in self.force_tokens):
            raise ConfigError(f"force_tokens must be a list of non-empty strings, got {self.force_tokens!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.context_level_rate is not None and not 0 < self.context_level_rate <= 1:
            raise ConfigError(f"context_level_rate must be in (0, 1], got {self.context_level_rate}")


# the classifiers published with the paper (Pan et al., 2024), by Hugging Face id, in order of preference
PUBLISHED_CLASSIFIERS = ("microsoft/llmlingua-2-xlm-roberta-large-meetingbank",
                         "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank")


def default_classifier() -> str | None:
    """Where the default classifier is: ``$MMCOMPRESS_LLMLINGUA2_CLASSIFIER``, else the folder the training recipe
    registered last (``<mmcompress cache>/llmlingua2/default.json``), else ``runs/llmlingua2-minilm/classifier``,
    else the first published classifier (:data:`PUBLISHED_CLASSIFIERS`) in the local Hugging Face cache, else the
    first that answers on the hub."""
    from ..models.loading import _in_local_hf_cache, _probe_hub, cache_dir

    env = os.environ.get(DEFAULT_CLASSIFIER_ENV)
    if env:
        return env
    pointer = cache_dir() / "llmlingua2" / "default.json"
    if pointer.is_file():
        try:
            path = json.loads(pointer.read_text())["path"]
            if Path(path, "config.json").is_file():
                return path
        except (ValueError, KeyError):
            pass
    local = Path("runs/llmlingua2-minilm/classifier")
    if (local / "config.json").is_file():
        return str(local.resolve())
    cached = [hf_id for hf_id in PUBLISHED_CLASSIFIERS if _in_local_hf_cache(hf_id)]
    return cached[0] if cached else next((hf_id for hf_id in PUBLISHED_CLASSIFIERS if _probe_hub(hf_id)), None)


def register_default_classifier(path: str | Path) -> Path:
    """Make ``path`` the classifier that ``llmlingua2`` uses when none is named."""
    from ..models.loading import cache_dir

    pointer = cache_dir() / "llmlingua2" / "default.json"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"path": str(Path(path).resolve())}))
    return pointer


@register_compressor("llmlingua2")
class LLMLingua2(BatchedHardCompressor):
    """Keep the words a token classifier labels most likely to keep (LLMLingua-2)."""

    config_class = LLMLingua2Config
    selection_unit = "word"  # labels are per word (token probabilities aggregated to words)

    def __init__(self, config: LLMLingua2Config | None = None, *, classifier_model: Any = None,
                 classifier_tokenizer: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._scorer: TokenClassifierScorer | None = None
        if classifier_model is not None:
            if classifier_tokenizer is None:
                raise ConfigError("pass classifier_tokenizer= together with classifier_model=")
            self._scorer = self._make_scorer(classifier_model, classifier_tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> LLMLingua2:
        """A saved classifier folder (written by the training recipe) as a compressor."""
        path = Path(path)
        meta = json.loads((path / "mmcompress_config.json").read_text())
        return cls(**{**meta.get("config", {}), "classifier": str(path), **overrides})

    # ---------------------------------------------------------------------------------------------- scorer
    def _make_scorer(self, model: Any, tokenizer: Any) -> TokenClassifierScorer:
        cfg = self.config
        return TokenClassifierScorer(model, tokenizer, max_length=cfg.max_seq_len, batch_size=cfg.batch_size,
                                     keep_label=cfg.keep_label, token_to_word=cfg.token_to_word,
                                     chunk_end_tokens=cfg.chunk_end_tokens,
                                     chunking="reference" if cfg.budget == "chunk" else "words")

    @property
    def scorer(self) -> TokenClassifierScorer:
        if self._scorer is None:
            name = self.config.classifier or default_classifier()
            if name is None:
                from ..models.loading import hub_offline

                where = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the Hugging Face hub is not reachable"
                raise ConfigError(
                    "llmlingua2 needs a token classifier and none was given or found: the published ones "
                    f"({', '.join(PUBLISHED_CLASSIFIERS)}) are not in the local Hugging Face cache and {where}. "
                    "Download one while online, pass classifier=<folder or HF id>, set "
                    "$MMCOMPRESS_LLMLINGUA2_CLASSIFIER, or train one with "
                    "`mmcompress train --config configs/train/llmlingua2-minilm.yaml`")
            t0 = time.perf_counter()
            loaded = TokenClassifierScorer.load(name, self.config.device, self.config.dtype, self.config.model_kwargs)
            self._scorer = self._make_scorer(loaded.model, loaded.tokenizer)
            self._load_seconds += time.perf_counter() - t0
        return self._scorer

    # -------------------------------------------------------------------------------------------- compress
    def word_probabilities(self, texts: Sequence[str]) -> list[WordProbs]:
        """The classifier's keep probability of every word of each text (before forcing)."""
        return self.scorer.word_probs(list(texts))

    def prepare(self, prompt: Any, *, rate: float | None = None, target_tokens: int | None = None,
                **kwargs: Any) -> Request:
        request = super().prepare(prompt, rate=rate, target_tokens=target_tokens, **kwargs)
        if self.config.budget == "chunk":  # the rate as given (llmlingua applies it to each chunk), not the plan's share
            if target_tokens is None and rate is None:
                rate = None if self.config.target_tokens else self.config.rate
            request.extras["llmlingua2"] = {"budget": "chunk", "rate": None if target_tokens is not None else rate}
        return request

    def fit_budget(self, request: Request, outcomes: list[SegmentOutcome], **kwargs: Any) -> list[SegmentOutcome]:
        """The shared final budget check, for ``budget: global`` only: llmlingua's chunk rule promises a rate per
        chunk, not a prompt-wide count, and shrinking its selection would part from the reference."""
        if self.config.budget == "chunk":
            return outcomes
        return super().fit_budget(request, outcomes, **kwargs)

    def _compress_requests(self, requests: Sequence[Request]) -> list[list[SegmentOutcome]]:
        if self.config.budget == "chunk":
            return compress_chunked(self, requests)
        jobs = [(r, k, seg.text) for r in requests for k, seg in enumerate(r.text_segments) if seg.policy is not Policy.KEEP]
        timings = requests[0].timings
        scorer = self.scorer
        with timings("score"):
            words = scorer.word_probs([text for _, _, text in jobs])
        with timings("units"):
            count_offsets = [off for _, off in self.tokenize_with_offsets([text for _, _, text in jobs])]
        found: dict[int, dict[int, tuple[Units, np.ndarray, np.ndarray]]] = {}
        for (r, k, text), wp, offsets in zip(jobs, words, count_offsets):
            units, parent = r.split(k, Units(text, wp.spans), offsets)  # a word longer than the budget is cut
            _, costs = aggregate_scores(units.spans, offsets, np.zeros(len(offsets)))
            found.setdefault(id(r), {})[k] = (units, np.asarray(wp.probs)[parent], costs)
        out = []
        for r in requests:
            per = found.get(id(r), {})
            with r.timings("select"):
                masks, scores = self._select(r, per)
            outcomes = []
            for k, seg in enumerate(r.text_segments):
                if k not in per:
                    outcomes.append(keep_whole(seg))
                    continue
                outcomes.append(unit_outcome(per[k][0], masks[k], "word", scores[k]))
            out.append(outcomes)
        return out

    def _select(self, request: Request, found: dict[int, tuple[Units, np.ndarray, np.ndarray]]) -> tuple[list, list]:
        """Keep masks and the scores they were ranked by (the shared budget check drops the lowest first)."""
        cfg = self.config
        n = len(request.text_segments)
        scores: list[np.ndarray | None] = [None] * n
        costs: list[np.ndarray | None] = [None] * n
        forced: dict[int, np.ndarray] = {}
        for k, (units, probs, unit_costs) in found.items():
            forced[k] = self._forced(units)
            scores[k] = np.where(forced[k], _FORCED_SCORE, probs)
            costs[k] = unit_costs
        if cfg.context_level_filter:  # None: off in the global budget (its behaviour before the chunk rule)
            self._filter_documents(request, found, scores)
        masks = allocate(request, scores, costs)
        if cfg.drop_consecutive and cfg.force_tokens:
            for k, (units, _, _) in found.items():
                masks[k] = _drop_consecutive(units, masks[k], set(cfg.force_tokens))
        return masks, scores

    def _forced(self, units: Units) -> np.ndarray:
        """Words overlapping an occurrence of a force token, and (optionally) words with a digit."""
        cfg = self.config
        mask = np.zeros(len(units), dtype=bool)
        if cfg.force_reserve_digit:
            mask |= np.array([bool(_DIGIT.search(w)) for w in units.strings()], dtype=bool)
        if cfg.force_tokens and len(units):
            spans = units.spans
            for token in cfg.force_tokens:
                for m in re.finditer(re.escape(token), units.text):
                    mask |= (spans[:, 0] < m.end()) & (spans[:, 1] > m.start())
        return mask

    def _filter_documents(self, request: Request, found: dict, scores: list) -> None:
        """Coarse step: documents whose mean word probability is below the percentile lose their words' rank."""
        pooled = [k for k in found if request.text_segments[k].policy is Policy.GLOBAL and len(found[k][1])]
        if len(pooled) < 2:
            return
        rate = self.config.context_level_rate
        if rate is None:
            rate = (request.plan.pooled_target / max(1, sum(request.costs[k] for k in pooled)) + 1) / 2
        doc_scores = np.array([found[k][1].mean() for k in pooled])
        threshold = np.percentile(doc_scores, 100 * (1 - rate))
        for k, s in zip(pooled, doc_scores):
            if s < threshold:
                scores[k] = scores[k] - 3.0  # below every word of a kept document; used only if budget is left


def _drop_consecutive(units: Units, mask: np.ndarray, force_tokens: set[str]) -> np.ndarray:
    """Unkeep a forced token equal to the previous kept word (e.g. ``". ."`` left after the words between went)."""
    mask = mask.copy()
    words = units.strings()
    previous = None
    for i in np.flatnonzero(mask):
        if words[i] in force_tokens and words[i] == previous:
            mask[i] = False
            continue
        previous = words[i]
    return mask
