"""LLMLingua (Jiang et al., EMNLP 2023, arXiv 2310.05736; reference code microsoft/LLMLingua, llmlingua 0.2.2).

Coarse to fine, on a small causal LM:

1. **Budget controller**: documents (or demonstrations) are ranked by perplexity and kept, best first, until the
   context budget (``context_budget``, default ``"+100"``: the token target plus 100) is used up.
2. **Sentence filter** (optional): sentences ranked the same way, kept up to ``token_budget_ratio`` x the target.
3. **Iterative token-level compression** (:mod:`mmcompress.scoring.iterative`): windows of ``iterative_size``
   tokens, each scored given the tokens already kept (KV-cache reuse), each with its own threshold.

The budget is the reference's: the rate counts the whole prompt, and instructions, questions and kept segments are
taken out of it first, so the whole saving comes out of the documents. Structured prompts use the prompt model:
a segment with its own ``rate`` gets that rate in its windows, a kept segment survives verbatim.

The reference's outputs are one option away (``first_pass="full"``; ``benchmarks/llmlingua_parity.py`` measures
agreement). Departures on purpose, each behind an option whose default is the reference behaviour unless it only
saves work:

- the reference first runs one extra pass over the whole context (``first_pass="full"``, which reproduces its
  outputs) whose only use is the scores behind the first window's decisions and the early windows' thresholds.
  ``"ranking"`` (LLMLingua's default) takes those scores from the document ranking, which has just scored each
  document on its own: the first document's are the very scores of that pass, later ones lack only the documents
  before them. It feeds nothing extra and skips the first window's own pass (about 200 tokens; agreement with the
  reference 0.991 against 0.981 for ``"window"`` on the first 10 golden rows). Where the ranking did not score every
  kept token on its own (no context filter, a question-conditioned ranking as in LongLLMLingua, a sentence filter, a
  question prefix) it runs as ``"window"``: each window is scored when the algorithm reaches it, as ITPC is written
  in the paper, and the first window's scores (given the uncompressed prefix, as in the reference's pass) stand in
  for the tokens not scored yet. ``benchmarks/hard_speed.py`` and ``benchmarks/llmlingua_parity.py`` measure them;
- ``compress_tail=True`` also compresses the last partial window and prompts shorter than ``iterative_size``,
  which the reference leaves untouched (issue #196: short prompts miss the rate);
- ``threshold_scope="window"`` thresholds each window on its own tokens, so the rate is met; the reference's
  quantile over all tokens scored so far (kept ones included) drops more than asked (``"prompt"``, the default);
- ``alignment="token"`` keeps a token by its own loss; the reference keeps token ``j`` by the loss of token
  ``j + 1`` (an off-by-one between its loss vector and its ids), the default ``"next"``;
- ``force_context_number`` caps the number of ranked documents (in the reference it has no effect unless 0);
- sentence bonuses (``keep_first_sentence``...) always promote a sentence (the reference demotes it when sentences
  are sorted by ascending perplexity, and ignores them for ``rank_method="llmlingua"``);
- keep_split uses the tokenizer's own line-break id, not LLaMA's 13.

Unlike the reference, documents and sentences are scored in a few batched forward passes (across prompts too, with
:meth:`LLMLingua.compress_batch`), and long inputs run with memory bounded by the model's window.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import BatchedHardCompressor, HardConfig, Request, SegmentOutcome, keep_whole
from ..errors import ConfigError, InvalidPromptError
from ..prompt import Policy, Role
from ..registry import register_compressor
from ..results import SegmentSelection
from ..scoring import CausalLMScorer
from ..scoring.iterative import IterativeCompressor, window_plan
from ..budget import rank_within_segment
from ..scoring.ranking import CONDITIONS, losses_in_context, rank_many
from ..text_units import sentence_units

REORDERS = ("original", "sort", "two_stage")
_BUDGET = re.compile(r"^\s*([+\-*/])\s*([0-9]*\.?[0-9]+)\s*$")
BUDGET_TRIMS = ("document_rank", "share")
FIRST_PASSES = ("window", "full", "ranking")
JOIN = "\n\n"  # the reference joins documents (and the question prefix) with a blank line


@dataclass
class LLMLinguaConfig(HardConfig):
    """Knobs of LLMLingua (names of llmlingua's ``compress_prompt`` arguments in brackets).

    ``context_filter`` [use_context_level_filter], ``token_filter`` [use_token_level_filter], ``sentence_filter``
    [use_sentence_level_filter]; ``context_budget``: ``"+N"``, ``"-N"``, ``"*k"`` or ``"/k"`` applied to the
    token target for the document filter; ``reorder`` [reorder_context]: original | sort | two_stage;
    ``dynamic_ratio`` [dynamic_context_compression_ratio]; ``batch_streams``: the two contrastive streams of
    ``condition_compare`` in one batch (same scores up to rounding; for GPUs, see :mod:`mmcompress.scoring.iterative`);
    ``rank_condition``: how documents are ranked (none:
    their own perplexity; after / before: question-aware); ``condition_tokens``: score tokens given the question
    (the reference's ``"_condition"`` suffix); ``condition_compare``: contrastive perplexity (implies
    ``condition_tokens``); ``cache_sink`` [cache_bos_num]. See the module docstring for ``first_pass``,
    ``alignment`` and ``compress_tail``. ``budget_trim`` (mmcompress's own: the package has no budget check): which
    kept tokens ``strict_budget`` drops first when the rendered prompt is over the target: ``document_rank`` (the
    lowest-ranked kept document's lowest-scored tokens first, then the next document up: the answer usually sits in
    the documents the ranking put first; the default, chosen on multi-document rows 20-39: answer retention 0.900 vs
    0.650, docs/evaluation.md) or ``share`` (every document gives up about the same share).
    """

    iterative_size: int = 200
    context_filter: bool = True
    token_filter: bool = True
    sentence_filter: bool = False
    context_budget: str = "+100"
    force_context_ids: list[int] | None = None
    force_context_number: int | None = None
    reorder: str = "original"
    dynamic_ratio: float = 0.0
    rank_condition: str = "none"
    condition_tokens: bool = False
    condition_compare: bool = False
    add_instruction: bool = False
    keep_split: bool = False
    token_budget_ratio: float = 1.4
    keep_first_sentence: int = 0
    keep_last_sentence: int = 0
    keep_sentence_number: int = 0
    high_priority_bonus: float = 100.0
    first_pass: str = "ranking"
    alignment: str = "next"
    compress_tail: bool = False
    threshold_scope: str = "prompt"
    cache_sink: int = 10
    max_batch_tokens: int = 8192
    batch_streams: bool = False
    reuse_prefix: bool = True  # tokens before a window's first drop stay cached, not re-fed (same scores; iterative.py)
    budget_trim: str = "document_rank"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget_trim not in BUDGET_TRIMS:
            raise ConfigError(f"budget_trim must be one of {BUDGET_TRIMS}, got {self.budget_trim!r}")
        if isinstance(self.max_batch_tokens, bool) or not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be a positive integer, got {self.max_batch_tokens!r}")
        if not isinstance(self.iterative_size, int) or self.iterative_size < 2:
            raise ConfigError(f"iterative_size must be an integer >= 2, got {self.iterative_size!r}")
        if not isinstance(self.context_budget, str) or not _BUDGET.match(self.context_budget):
            raise ConfigError(f"context_budget must look like '+100', '-50', '*2' or '/1.5', got {self.context_budget!r}")
        if self.reorder not in REORDERS:
            raise ConfigError(f"reorder must be one of {REORDERS}, got {self.reorder!r}")
        if self.rank_condition not in CONDITIONS:
            raise ConfigError(f"rank_condition must be one of {CONDITIONS}, got {self.rank_condition!r}")
        if self.first_pass not in FIRST_PASSES:
            raise ConfigError(f"first_pass must be one of {FIRST_PASSES} ('full': the reference), got {self.first_pass!r}")
        if self.threshold_scope not in ("prompt", "window"):
            raise ConfigError(f"threshold_scope must be 'prompt' (reference) or 'window', got {self.threshold_scope!r}")
        if self.alignment not in ("next", "token"):
            raise ConfigError(f"alignment must be 'next' (reference) or 'token', got {self.alignment!r}")
        if not 0.0 <= float(self.dynamic_ratio) <= 1.0:
            raise ConfigError(f"dynamic_ratio must be in [0, 1], got {self.dynamic_ratio!r}")
        if self.force_context_ids is not None and not all(isinstance(i, int) for i in self.force_context_ids):
            raise ConfigError(f"force_context_ids must be a list of document indices, got {self.force_context_ids!r}")

    @property
    def question_aware(self) -> bool:
        return self.rank_condition != "none" or self.condition_tokens or self.condition_compare


@dataclass
class _Job:
    """One prompt on its way through the coarse and fine steps."""

    request: Request
    docs: list[int]  # text-segment indices of the documents (segments that may be compressed or reordered)
    question: str
    instruction: str
    target: float  # tokens the documents may keep
    texts: dict[int, str] = field(default_factory=dict)  # document text after the sentence filter
    char_maps: dict[int, np.ndarray] = field(default_factory=dict)  # filtered char -> original char
    used: list[int] = field(default_factory=list)  # documents kept by the coarse step, in output order
    dynamic: dict[int, float] = field(default_factory=dict)
    by_rank: list[int] = field(default_factory=list)  # documents kept by the coarse step, best ranked first
    ranking: Any = None
    ids: np.ndarray | None = None
    offsets: np.ndarray | None = None
    start: int = 0
    pieces: list[tuple[int, int]] = field(default_factory=list)  # char span of each used document in the joint text
    priority: np.ndarray | None = None  # each token's final ITPC score (NaN: never scored), for the budget check


@register_compressor("llmlingua")
class LLMLingua(BatchedHardCompressor):
    """Budget controller + iterative token-level compression on a causal LM (default: SmolLM2-135M)."""

    config_class = LLMLinguaConfig
    batch_chunk = 16  # documents, sentences and first passes of 16 prompts are scored in shared batches

    @property
    def scorer(self) -> CausalLMScorer:
        if getattr(self, "_scorer", None) is None:
            self._scorer = CausalLMScorer(self.model, self.tokenizer, max_batch_tokens=self.config.max_batch_tokens,
                                          start_token=None)
        return self._scorer

    @property
    def newline_id(self) -> int | None:
        """The tokenizer's own id for a line break (LLaMA: 13, GPT-2 and SmolLM2: 198), None if it has none."""
        ids = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) == 1 else None

    # ------------------------------------------------------------------------------------------------ steps
    def _compress_requests(self, requests: Sequence[Request]) -> list[list[SegmentOutcome]]:
        cfg = self.config
        jobs = [self._job(r) for r in requests]
        timings = requests[0].timings
        with timings("rank"):
            self._coarse(jobs)
        if cfg.sentence_filter:
            with timings("sentences"):
                self._sentences(jobs)
        with timings("tokens"):
            kept = self._fine(jobs) if cfg.token_filter else [None] * len(jobs)
        return [self._outcomes(job, mask) for job, mask in zip(jobs, kept)]

    def _job(self, request: Request) -> _Job:
        segs = request.text_segments
        fixed_roles = (Role.INSTRUCTION, Role.QUESTION)
        docs = [k for k, s in enumerate(segs) if not (s.role in fixed_roles and s.policy is Policy.KEEP)]
        question = "\n".join(s.text for s in segs if s.role is Role.QUESTION)
        instruction = "\n".join(s.text for s in segs if s.role is Role.INSTRUCTION and s.policy is Policy.KEEP)
        if self.config.question_aware and not question.strip():
            raise InvalidPromptError(
                f"{self.name} with rank_condition={self.config.rank_condition!r}, condition_tokens or condition_compare "
                "is question-aware: pass question=... (or a prompt with a question segment)"
            )
        plan = request.plan
        # the documents' share of the budget: the pooled target plus the own-rate documents' targets
        target = plan.pooled_target + sum(plan.segment_targets[k] or 0 for k in docs if segs[k].policy is Policy.OWN_RATE)
        job = _Job(request, docs, question, instruction, float(target))
        job.texts = {k: segs[k].text for k in docs}
        return job

    # ---- coarse: documents
    def _coarse(self, jobs: list[_Job]) -> None:
        cfg = self.config
        todo = [j for j in jobs if cfg.context_filter and len(j.docs) > 1]
        for job in jobs:
            job.used = list(range(len(job.docs)))
            job.dynamic = {d: 0.0 for d in job.used}
        if not todo:
            return
        rankings = rank_many(self.scorer, [[j.texts[k] for k in j.docs] for j in todo], [j.question for j in todo],
                             cfg.rank_condition)
        for job, ranking in zip(todo, rankings):
            job.ranking = ranking
            segs = job.request.text_segments
            lengths = [job.request.costs[k] for k in job.docs]
            budget = _apply_budget(job.target if job.target >= 0 else 100.0, cfg.context_budget)
            used = [i for i in (cfg.force_context_ids or []) if 0 <= i < len(job.docs)]
            used += [i for i, k in enumerate(job.docs) if segs[k].policy is Policy.KEEP and i not in used]
            ranked = 0
            for i in ranking.order:
                if cfg.force_context_number is not None and ranked >= cfg.force_context_number:
                    break
                budget -= lengths[i]
                if i not in used:
                    used.append(i)
                    ranked += 1
                if budget < 0:
                    break
            by_rank = list(used)
            if cfg.reorder == "original":
                used = sorted(used)
            elif cfg.reorder == "two_stage":
                used = used[0::2] + used[1::2][::-1]
            n = len(by_rank)
            step = cfg.dynamic_ratio / (n - 1) if n > 1 else 0.0
            offsets = [i * step for i in range(-(n - 1), n, 2)][::-1]  # +d for the best document ... -d for the worst
            job.used = used
            job.by_rank = by_rank
            job.dynamic = {d: (offsets[r] if cfg.dynamic_ratio > 0 else 0.0) for r, d in enumerate(by_rank)}
            job.request.extras["ranking"] = {"order": list(ranking.order), "scores": ranking.scores.tolist(),
                                             "kept_documents": list(used)}

    # ---- optional: sentences
    def _sentences(self, jobs: list[_Job]) -> None:
        cfg = self.config
        groups, owners = [], []
        for job in jobs:
            spans = []
            for d in job.used:
                k = job.docs[d]
                text = job.texts[k]
                units = sentence_units(text).spans
                # a sentence runs to the start of the next one, so whitespace stays attached (as in the reference)
                starts = [0] + [int(s) for s, _ in units[1:]]
                ends = starts[1:] + [len(text)]
                spans += [(d, s, e) for s, e in zip(starts, ends) if e > s]
            groups.append(spans)
            owners.append(job)
        condition = cfg.rank_condition
        rankings = rank_many(self.scorer, [[job.texts[job.docs[d]][s:e] for d, s, e in spans]
                                           for job, spans in zip(owners, groups)],
                             [job.question for job in owners], condition)
        for job, spans, ranking in zip(owners, groups, rankings):
            if len(spans) <= 1:
                continue
            scores = ranking.scores.astype(np.float64).copy()
            promote = -cfg.high_priority_bonus if condition != "none" else cfg.high_priority_bonus
            if cfg.keep_first_sentence:
                scores[: cfg.keep_first_sentence] += promote
            if cfg.keep_last_sentence:
                scores[-cfg.keep_last_sentence :] += promote
            if cfg.keep_sentence_number:
                for d in job.used:
                    mine = [i for i, (dd, _, _) in enumerate(spans) if dd == d]
                    best = sorted(mine, key=lambda i: scores[i] * (1 if condition == "none" else -1))
                    for i in best[: cfg.keep_sentence_number]:
                        scores[i] += promote
            direction = -1.0 if condition == "none" else 1.0
            order = [i for i, _ in sorted(enumerate(scores.tolist()), key=lambda x: direction * x[1])]
            lengths = self.count_tokens([job.texts[job.docs[d]][s:e] for d, s, e in spans])
            budget = (job.target if job.target >= 0 else 100.0) * cfg.token_budget_ratio
            keep = np.zeros(len(spans), bool)
            for i in order:
                budget -= lengths[i]
                keep[i] = True
                if budget < 0:
                    break
            for d in job.used:
                k = job.docs[d]
                if job.request.text_segments[k].policy is Policy.KEEP:
                    continue
                mine = [(s, e) for (dd, s, e), kk in zip(spans, keep) if dd == d and kk]
                text = job.texts[k]
                job.texts[k] = "".join(text[s:e] for s, e in mine)
                job.char_maps[k] = np.concatenate([np.arange(s, e) for s, e in mine] + [np.zeros(0, np.int64)])

    # ---- fine: tokens
    def _fine(self, jobs: list[_Job]) -> list[np.ndarray | None]:
        cfg = self.config
        condition = cfg.condition_tokens or cfg.condition_compare
        try:
            runners = {mode: IterativeCompressor(self.scorer, iterative_size=cfg.iterative_size, sink=cfg.cache_sink,
                                                 first_pass=mode, alignment=cfg.alignment,
                                                 compress_tail=cfg.compress_tail, threshold_scope=cfg.threshold_scope,
                                                 batch_streams=cfg.batch_streams, reuse_prefix=cfg.reuse_prefix)
                   for mode in ("full", "window")}
        except ValueError as e:
            raise ConfigError(str(e)) from None
        runner = runners["window"]
        plans, active = [], []
        for job in jobs:
            docs_text = [job.texts[job.docs[d]] for d in job.used]
            if not docs_text:
                plans.append(None)
                continue
            prefix = ""
            if condition:
                prefix = job.question + (JOIN + job.instruction if cfg.add_instruction and job.instruction else "")
                prefix = self._fit_prefix(prefix, runner)
            pieces_text = ([prefix] if condition else []) + docs_text
            joined, pieces, cursor = "", [], 0
            for i, t in enumerate(pieces_text):
                if i:
                    joined += JOIN
                    cursor += len(JOIN)
                pieces.append((cursor, cursor + len(t)))
                joined += t
                cursor += len(t)
            (ids, offsets), = self.tokenize_with_offsets([joined])
            job.ids, job.offsets = ids.astype(np.int64), offsets
            if condition:
                job.start = int(np.searchsorted(offsets[:, 0], pieces[0][1] + len(JOIN), side="left"))
                job.pieces = pieces[1:]
            else:
                job.pieces = pieces
            plans.append(self._plan(job, runner))
            active.append(job)
        initial = {}
        if cfg.first_pass == "ranking":
            for job in active:
                own = self._ranking_losses(job)
                if own is not None:
                    initial[id(job)] = (own, None)
        if cfg.first_pass == "full" and active:
            seqs = []
            for job in active:
                seqs.append(job.ids)
                if cfg.condition_compare:
                    seqs.append(job.ids[job.start :])
            losses = runner.first_pass_losses(seqs)
            per = 2 if cfg.condition_compare else 1
            for i, job in enumerate(active):
                initial[id(job)] = (losses[per * i], losses[per * i + 1] if per == 2 else None)
        out = []
        split_id = self.newline_id if cfg.keep_split else None
        for job, plan in zip(jobs, plans):
            if plan is None:
                out.append(None)
                continue
            window_plan_, force = plan
            flags = None
            if split_id is not None:
                ids = job.ids
                same = ids == split_id
                flags = same & (np.r_[False, same[:-1]] | np.r_[same[1:], False])
            # first_pass="ranking": the ranking's scores stand in for the reference's full pass where it ran
            mode = "full" if cfg.first_pass == "full" or id(job) in initial else "window"
            result = runners[mode].run(job.ids, job.start, window_plan_, compare=cfg.condition_compare, force=force,
                                       split_id=split_id, split_flags=flags, initial=initial.get(id(job)))
            job.request.extras["forward_tokens"] = result.forward_tokens
            job.request.extras["max_cache"] = result.max_cache
            values = result.values if result.self_values is None else result.self_values - result.values
            job.priority = None if values is None else np.nan_to_num(np.asarray(values, np.float64), nan=np.inf)
            out.append(result.kept)
        return out

    def _ranking_losses(self, job: _Job) -> np.ndarray | None:
        """The ranking's own-token losses placed over ``job.ids`` (:func:`losses_in_context`); None where the ranking
        did not score each kept token on its own (a question-conditioned one, a question prefix, sentences dropped)."""
        cfg = self.config  # a question prefix (condition_tokens / condition_compare) sets job.start
        if job.ranking is None or job.start or cfg.rank_condition != "none" or cfg.sentence_filter:
            return None
        return losses_in_context(job.ranking, job.used, job.pieces, job.offsets)

    def _fit_prefix(self, prefix: str, runner: IterativeCompressor) -> str:
        """Shorten a question prefix that leaves no room for two windows (keep its head and tail, as the reference)."""
        ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        room = runner.max_position - 2 * runner.size - 4
        if len(ids) <= room:
            return prefix
        head = min(100, room // 2)
        return self.tokenizer.decode(ids[:head] + ids[len(ids) - (room - head) :])

    def _plan(self, job: _Job, runner: IterativeCompressor):
        """Window plan (per-document keep-rates) and the tokens forced to survive."""
        segs = job.request.text_segments
        docs = [job.docs[d] for d in job.used]
        lengths = [n + 2 for n in self.count_tokens([job.texts[k] for k in docs])]
        fixed = sum(l - 2 for k, l in zip(docs, lengths) if segs[k].policy is Policy.KEEP)
        fixed += sum(segs[k].rate * (l - 2) for k, l in zip(docs, lengths) if segs[k].policy is Policy.OWN_RATE)
        pooled = sum(l for k, l in zip(docs, lengths) if segs[k].policy is Policy.GLOBAL)
        tau = (job.target - fixed) / (pooled + 1)
        rates = []
        for d, k in zip(job.used, docs):
            policy = segs[k].policy
            rates.append(1.0 if policy is Policy.KEEP else
                         (segs[k].rate if policy is Policy.OWN_RATE else tau) + job.dynamic.get(d, 0.0))
        force = np.zeros(len(job.ids), bool)
        starts = job.offsets[:, 0]
        for (s, e), k in zip(job.pieces, docs):
            if segs[k].policy is Policy.KEEP:
                force[(starts >= s) & (starts < e)] = True
        return window_plan(lengths, rates, runner.size), (force if force.any() else None)

    # ---- output
    def _outcomes(self, job: _Job, kept: np.ndarray | None) -> list[SegmentOutcome]:
        segs = job.request.text_segments
        outcomes = [keep_whole(s) for s in segs]
        used_docs = [job.docs[d] for d in job.used]
        for d, k in enumerate(job.docs):
            if d not in job.used:
                outcomes[k] = SegmentOutcome("", SegmentSelection.whole(segs[k].text, False, unit="document"))
        if kept is None:  # no token-level step: documents (after the sentence filter) as they are
            for k in used_docs:
                outcomes[k] = self._from_chars(segs[k].text, job.texts[k], job.char_maps.get(k))
        else:
            starts = job.offsets[:, 0]
            prev_end = None
            for (s, e), k in zip(job.pieces, used_docs):
                inside = np.flatnonzero((starts >= s) & (starts < e))
                sep = None
                if prev_end is not None:  # the separator's kept tokens, as the reference decodes them
                    between = np.flatnonzero((starts >= prev_end) & (starts < s) & kept)
                    sep = self.tokenizer.decode(job.ids[between].tolist())
                prev_end = e
                if segs[k].policy is Policy.KEEP:
                    outcomes[k] = SegmentOutcome(segs[k].text, SegmentSelection.whole(segs[k].text, True), sep)
                    continue
                mask = kept[inside]
                render = (lambda m, inside=inside: self.tokenizer.decode(job.ids[inside[m]].tolist()))  # noqa: E731
                text = render(mask)
                spans = np.clip(job.offsets[inside] - s, 0, e - s)
                cmap = job.char_maps.get(k)
                if cmap is not None and len(cmap):
                    spans = np.stack([cmap[np.minimum(spans[:, 0], len(cmap) - 1)],
                                      cmap[np.maximum(spans[:, 1] - 1, 0)] + 1], axis=1)
                priority = None if job.priority is None else rank_within_segment(job.priority[inside], mask)
                if priority is not None and self.config.budget_trim == "document_rank" and job.by_rank:
                    d = job.docs.index(k)  # a whole document's ranks (unscored ones too) below a better one's
                    rank = len(job.by_rank) - 1 - job.by_rank.index(d) if d in job.by_rank else 0
                    priority = np.where(np.isposinf(priority), 1.5, priority) + 2 * rank
                outcomes[k] = SegmentOutcome(text, SegmentSelection("token", spans, mask), sep, priority, render)
        # reorder: document slots show the kept documents in output order, then the dropped ones (removed)
        order = list(range(len(segs)))
        slots = sorted(job.docs)
        shown = used_docs + [k for k in job.docs if k not in used_docs]
        for slot, k in zip(slots, shown):
            order[slot] = k
        if order != list(range(len(segs))):
            job.request.order = order
        return outcomes

    @staticmethod
    def _from_chars(original: str, text: str, cmap: np.ndarray | None) -> SegmentOutcome:
        if cmap is None:
            cmap = np.arange(len(original))
        kept = np.zeros(len(original), bool)
        kept[cmap] = True
        spans = np.stack([np.arange(len(original)), np.arange(1, len(original) + 1)], axis=1)
        # the budget check may cut the document's kept characters from its end
        return SegmentOutcome(text, SegmentSelection("char", spans, kept), priority=-np.arange(len(original), dtype=float),
                              render=lambda m: "".join(np.asarray(list(original))[m]))


def _apply_budget(target: float, context_budget: str) -> float:
    op, value = _BUDGET.match(context_budget).groups()
    value = float(value)
    return {"+": target + value, "-": target - value, "*": target * value, "/": target / value}[op]
