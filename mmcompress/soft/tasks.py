"""Training tasks ``icae`` and ``kv``: pretrain (autoencoding + continuation on plain text) and/or QA fine-tuning of
an encoder-based soft compressor, run by ``mmcompress train --config configs/train/<recipe>.yaml``.

Recipe sections::

    task: icae                      # or kv
    model:                          # fields of IcaeConfig / KvConfig (base model, num_slots, chunk_tokens, lora_*)
      model: smollm2-135m
      num_slots: 32
      chunk_tokens: 128
    init_from: null                 # a saved compressor folder to start from (e.g. pretrain -> QA fine-tuning)
    data:
      text: ../shared/data/corpus_wiki_news.txt   # plain text; documents separated by blank lines
      eval_fraction: 0.05           # the last 5% of documents are held out, never trained on
      eval_split: validation        # which part of them evaluation reads: validation (first half of the held-out
                                    # documents: model and setting choices), test (second half: reported once), all
      context_tokens: 128           # tokens compressed per example
      span_tokens: []               # extra autoencoding windows of these sizes (e.g. [256]: four 64-token chunks),
                                    # so the decoder learns to read several chunks' soft tokens together, as
                                    # generate() gives them for a long context
      entity_weight: 1.0            # > 1: in the text windows' loss, tokens inside a named entity or number
                                    # (spaCy NER: names, places, dates, quantities) weigh this much, the rest 1
      cloze_tokens: 0               # > 0: add cloze questions on training windows of this many tokens: the words
                                    # around one of the window's named entities, the entity blanked, answered from
                                    # the soft prompt through qa_template (self-supervised reading; ClozeDataset)
      cloze_per_window: 1           # cloze questions per window, each on a different entity
      continuation_tokens: 0        # > 0: continuation examples predict this many following tokens
      lm_ratio: 0.0                 # fraction of continuation examples (ICAE: 0.4-0.6 once AE works)
      qa: null                      # SQuAD-style JSONL: adds QA examples ({context, question, answers})
      qa_eval_fraction: 0.1         # the last 10% of QA rows are held out (split by eval_split, as the text)
      qa_template: plain            # how the decoder reads the question: plain ("Question: ..\nAnswer:"), chatml
                                    # (a ChatML user turn, as SmolLM2-Instruct was tuned) or a string with {question}
      qa_repeat: 1                  # the QA rows appear this many times in the training mix (next to ~10k text
                                    # windows of 64 tokens, once is ~8% of the examples; 10 is about half)
      qa_answers: gold              # gold (the rows' answers) or teacher: the decoder's own greedy answer from the
                                    # full context as text (sequence-level self-distillation; cached in output_dir)
      eval_examples: 64
    train: {output_dir: runs/icae, max_steps: 1000, batch_size: 8, lr: 1e-4, ...}   # TrainConfig

The trained compressor is saved to ``<output_dir>/final`` (``create_compressor`` loads it); checkpoints hold only the
trained tensors and resume exactly (``--set train.resume=true``).
"""
from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data_paths import resolve_data_path
from ..errors import ConfigError
from ..training.trainer import TrainConfig, process_state
from ..training.tasks import TaskSetup
from .losses import ClozeDataset, PretrainDataset, QADataset, qa_template, read_jsonl

DATA_DEFAULTS = {"text": None, "eval_fraction": 0.05, "eval_split": "validation", "context_tokens": 128,
                 "span_tokens": [], "entity_weight": 1.0, "cloze_tokens": 0,
                 "cloze_per_window": 1, "continuation_tokens": 0, "lm_ratio": 0.0,
                 "lm_skip_tokens": 0, "qa": None, "qa_eval_fraction": 0.1, "qa_template": "plain", "qa_repeat": 1,
                 "qa_answers": "gold", "eval_examples": 64, "max_train_examples": None, "seed": 0}


def documents(path: str | Path) -> list[str]:
    text = resolve_data_path(path).read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def split_documents(docs: list[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """The last ``eval_fraction`` of the documents are held out (a contiguous tail: no document is in both)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction and len(docs) < 2:
        raise ConfigError(f"the training text has {len(docs)} document(s) (blank-line separated); holding out "
                          f"eval_fraction={eval_fraction} needs at least 2 (or set eval_fraction: 0)")
    cut = len(docs) - max(1, int(round(len(docs) * eval_fraction))) if eval_fraction else len(docs)
    return docs[:cut], docs[cut:]


def windows(docs: list[str], tokenizer: Any, size: int) -> list[list[int]]:
    """Non-overlapping windows of ``size`` tokens within each document."""
    return cut_windows(tokenizer(docs, add_special_tokens=False)["input_ids"], size)


def cut_windows(doc_ids: list[list[int]], size: int) -> list[list[int]]:
    """Non-overlapping windows of ``size`` ids within each tokenized document."""
    return [ids[i : i + size] for ids in doc_ids for i in range(0, len(ids) - size + 1, size)]


EVAL_SPLITS = ("validation", "test", "all")


def held_out_part(held: list[str], split: str) -> list[str]:
    """The validation (first half) or test (second half) documents of the held-out tail, or all of it."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if split == "all":
        return held
    if len(held) < 2:
        raise ConfigError(f"the held-out tail has {len(held)} document(s); a validation/test split needs at least 2 "
                          "(raise eval_fraction or use eval_split: all)")
    half = len(held) // 2
    return held[:half] if split == "validation" else held[half:]


def qa_cut(rows: list[Any], eval_fraction: float) -> int:
    """Where the QA rows' held-out tail starts: the last ``eval_fraction`` of them (at least one row)."""
    return len(rows) - max(1, int(len(rows) * eval_fraction))


def held_out_windows(recipe: dict[str, Any], tokenizer: Any) -> list[list[int]]:
    """The held-out windows of a recipe's text in its ``eval_split`` (what reconstruction is measured on)."""
    data = {**DATA_DEFAULTS, **(recipe.get("data") or {})}
    _, held = split_documents(documents(data["text"]), data["eval_fraction"])
    return windows(held_out_part(held, data["eval_split"]), tokenizer, data["context_tokens"])


def build_datasets(data: dict[str, Any], tokenizer: Any, eos: int,
                   answer_with: Callable[[list[dict[str, Any]]], list[str]] | None = None, focus: Any = None):
    """The training and held-out datasets of a recipe's data section. ``answer_with`` (``qa_answers: teacher``)
    replaces the answers of the QA training rows; held-out rows keep their gold answers. ``focus`` (a mean-pooling
    compressor's ``question_focus_of``): the QA examples' question-focused pooling."""
    train_parts, eval_parts = [], []
    size = data["context_tokens"] + data["continuation_tokens"]
    cloze = check_cloze(data)
    if data["text"]:
        train_docs, eval_docs = split_documents(documents(data["text"]), data["eval_fraction"])
        eval_docs = held_out_part(eval_docs, data["eval_split"])
        weight = check_entity_weight(data)
        # tokenized once: every window size (context_tokens, span_tokens, cloze_tokens) is cut from the same ids, and
        # the entity marks (entity_weight, cloze) from the same pass's character offsets; held-out windows are unweighted
        encoded = tokenize(train_docs, tokenizer, offsets=weight != 1.0 or cloze > 0)
        train_ids, eval_ids = encoded["input_ids"], tokenize(eval_docs, tokenizer)["input_ids"]
        marks = entity_marks(train_docs, encoded["offset_mapping"]) if weight != 1.0 or cloze > 0 else None
        train_weights = [[weight if m else 1.0 for m in doc] for doc in marks] if weight != 1.0 else None

        def shuffled(size: int, seed: int) -> tuple[list[list[int]], list[list[float]] | None]:
            ids = cut_windows(train_ids, size)
            order = list(range(len(ids)))
            random.Random(seed).shuffle(order)  # the permutation shuffling the windows themselves would make
            weights = cut_windows(train_weights, size) if train_weights is not None else None
            return [ids[i] for i in order], (None if weights is None else [weights[i] for i in order])

        train_w, train_w_weights = shuffled(size, data["seed"])
        eval_w = cut_windows(eval_ids, size)
        if not train_w:
            raise ConfigError(f"{data['text']} has no window of {size} tokens to train on")
        if data["max_train_examples"]:
            train_w = train_w[: int(data["max_train_examples"])]
            if train_w_weights is not None:
                train_w_weights = train_w_weights[: int(data["max_train_examples"])]
        make = functools.partial(PretrainDataset, context_tokens=data["context_tokens"],
                                 continuation_tokens=data["continuation_tokens"], lm_ratio=data["lm_ratio"], eos_id=eos,
                                 lm_skip_tokens=data["lm_skip_tokens"])
        train_parts.append(make(train_w, seed=data["seed"], weights=train_w_weights))
        eval_parts.append(make(eval_w[: data["eval_examples"]], seed=data["seed"] + 1))
        for span in span_sizes(data):
            span_w, span_weights = shuffled(span, data["seed"] + span)
            if not span_w:
                raise ConfigError(f"{data['text']} has no window of span_tokens={span} tokens to train on")
            spans = functools.partial(make, context_tokens=span, continuation_tokens=0, lm_ratio=0.0)
            train_parts.append(spans(span_w, seed=data["seed"], weights=span_weights))
            eval_parts.append(spans(cut_windows(eval_ids, span)[: data["eval_examples"]], seed=data["seed"] + 1))
        if cloze:
            train_parts.append(ClozeDataset(cut_windows(train_ids, cloze), cut_windows(marks, cloze), tokenizer,
                                            qa_template(data["qa_template"]), per_window=int(data["cloze_per_window"]),
                                            seed=data["seed"]))
    if data["qa"]:
        data = {**data, "qa_template": qa_template(data["qa_template"])}
        rows = read_jsonl(resolve_data_path(data["qa"]))
        cut = qa_cut(rows, data["qa_eval_fraction"])
        repeat = int(data["qa_repeat"])
        if repeat < 1:
            raise ConfigError(f"qa_repeat must be >= 1, got {data['qa_repeat']}")
        train_rows = rows[:cut]
        if answer_with is not None:
            train_rows = [{**row, "answers": [answer]} for row, answer in zip(train_rows, answer_with(train_rows))]
        qa = QADataset(train_rows, tokenizer, data["context_tokens"] * 8, data["qa_template"], focus)
        train_parts += [qa] * repeat
        held = held_out_part(rows[cut:], data["eval_split"])
        eval_parts.append(QADataset(held[: data["eval_examples"]], tokenizer, data["context_tokens"] * 8,
                                    data["qa_template"], focus))
    if not train_parts:
        raise ConfigError("the recipe's data section needs 'text' (plain text) and/or 'qa' (JSONL)")
    cat = lambda parts: parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)  # noqa: E731
    return cat(train_parts), cat(eval_parts)


def tokenize(docs: list[str], tokenizer: Any, offsets: bool = False) -> dict[str, Any]:
    """The documents' ids without special tokens, and each token's character span when ``offsets``."""
    try:
        return tokenizer(docs, add_special_tokens=False, return_offsets_mapping=offsets)
    except NotImplementedError:  # slow (Python) tokenizers have no character offsets
        raise ConfigError("entity_weight needs a fast tokenizer (one with character offsets)") from None


def entity_marks(docs: list[str], offsets: list[list[tuple[int, int]]]) -> list[list[bool]]:
    """Per document, one bool per token (``offsets``: each token's character span): whether the token overlaps a
    named entity or number that spaCy finds."""
    from ..text_units import entity_char_spans

    try:
        spans = entity_char_spans(docs)
    except RuntimeError as e:
        raise ConfigError(f"entity_weight and cloze_tokens: {e}") from None
    out = []
    for doc, doc_spans, doc_offsets in zip(docs, spans, offsets):
        marks = np.zeros(len(doc) + 1, dtype=np.int64)
        for start, end in doc_spans:
            marks[start + 1 : end + 1] = 1
        inside = np.cumsum(marks)  # entity characters before each offset
        out.append([bool(inside[e] > inside[s]) for s, e in doc_offsets])
    return out


def check_entity_weight(data: dict[str, Any]) -> float:
    """The recipe's ``entity_weight`` (a number > 0; 1 leaves the loss unweighted)."""
    w = data.get("entity_weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise ConfigError(f"entity_weight must be a number > 0 (1: unweighted), got {w!r}")
    return float(w)


def check_cloze(data: dict[str, Any]) -> int:
    """The recipe's ``cloze_tokens`` (0: no cloze questions), checked with ``cloze_per_window``."""
    size, per = data.get("cloze_tokens", 0), data.get("cloze_per_window", 1)
    for name, value, least in (("cloze_tokens", size, 0), ("cloze_per_window", per, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
    if size and not data.get("text"):
        raise ConfigError("cloze_tokens needs 'text': the cloze questions are made from its training windows")
    return size


def span_sizes(data: dict[str, Any]) -> list[int]:
    """The recipe's ``span_tokens`` as a list of window sizes (one int or a list; each > 0)."""
    spans = data.get("span_tokens") or []
    spans = [spans] if isinstance(spans, int) else list(spans)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in spans):
        raise ConfigError(f"span_tokens must be a positive int or a list of them, got {data.get('span_tokens')!r}")
    return spans


TEACHER_ANSWER_TOKENS = 16  # as many as the QA evaluation lets the reader generate


def teacher_answers(compressor: Any, cache: Path) -> Callable[[list[dict[str, Any]]], list[str]]:
    """Sequence-level self-distillation targets (as xRAG distils the reader with the full text): the compressor's
    own decoder answers each row from the full context as text, greedily, with the recipe's QA template. The soft
    prompt is then trained to make the reader say what it says with the context in front of it. The answers are
    cached in ``cache`` (a JSONL of ``{question, answer}``) and reused while the rows' questions match."""
    from ..evaluation.soft_qa import evaluate_soft_qa

    def answer(rows: list[dict[str, Any]]) -> list[str]:
        with process_state().main_process_first():  # in a data-parallel run the others read the main one's cache
            if cache.is_file():
                saved = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
                if [s["question"] for s in saved] == [r["question"] for r in rows]:
                    return [s["answer"] for s in saved]
            answers = evaluate_soft_qa(compressor, rows, setting="full_context",
                                       max_new_tokens=TEACHER_ANSWER_TOKENS).answers
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text("".join(json.dumps({"question": r["question"], "answer": a}) + "\n"
                                     for r, a in zip(rows, answers)), encoding="utf-8")
            return answers

    return answer


def _build(recipe: dict[str, Any], method: str) -> TaskSetup:
    from ..factory import create_compressor, trained_or_saved
    from ..registry import COMPRESSORS

    data = {**DATA_DEFAULTS, **(recipe.get("data") or {})}
    unknown = sorted(set(data) - set(DATA_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown data settings {unknown}; valid: {sorted(DATA_DEFAULTS)}")
    if data["qa_answers"] not in ("gold", "teacher"):  # checked before the model loads
        raise ConfigError(f"qa_answers must be gold or teacher, got {data['qa_answers']!r}")
    span_sizes(data)
    check_entity_weight(data)
    check_cloze(data)
    fields = dict(recipe.get("model") or {})
    if recipe.get("init_from"):
        compressor = COMPRESSORS.get(method).from_pretrained(trained_or_saved(recipe["init_from"], "init_from"), **fields)
    else:
        compressor = create_compressor(method, **fields)
    tokenizer = compressor.tokenizer
    answer_with = None
    if data["qa"] or data["cloze_tokens"]:
        compressor.config.qa_template = qa_template(data["qa_template"])
        if data["qa_answers"] == "teacher":
            output_dir = TrainConfig.from_dict(recipe.get("train")).output_dir
            answer_with = teacher_answers(compressor, Path(output_dir) / "teacher_answers.jsonl")
    focus_of = getattr(compressor, "question_focus_of", None)  # mean-pooling with question_focus
    focus = focus_of() if focus_of is not None else None
    train, held = build_datasets(data, tokenizer, tokenizer.eos_token_id, answer_with, focus)
    module = compressor.module
    module.train()
    return TaskSetup(module=module, train_dataset=train, eval_dataset=held, collate_fn=compressor.training_collate(),
                     finalize=lambda _m, out: compressor.save_pretrained(Path(out) / "final"))


def build_icae(recipe: dict[str, Any]) -> TaskSetup:
    """Train an ICAE compressor (see the module docstring for the recipe)."""
    return _build(recipe, "icae")


def build_kv(recipe: dict[str, Any]) -> TaskSetup:
    """Train a 500xCompressor (kv) compressor (same recipe as icae)."""
    return _build(recipe, "kv")


def build_meanpool(recipe: dict[str, Any]) -> TaskSetup:
    """Train a mean-pooling compressor (same recipe as icae; ``model.pool_ratio`` instead of ``num_slots``)."""
    return _build(recipe, "meanpool")
