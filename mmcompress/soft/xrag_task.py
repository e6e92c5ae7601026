"""Training task ``xrag``: paraphrase pretraining on plain text, QA fine-tuning with self-distillation on SQuAD-style
JSONL (xRAG's two stages). Recipes: ``configs/train/xrag-paraphrase.yaml``, ``configs/train/xrag-squad.yaml``.

    task: xrag
    model: {model: smollm2-135m, encoder: minilm-l6, tokens_per_chunk: 1, init_from: null}
    data: {kind: paraphrase, path: corpus.txt, passage_words: 48, eval_fraction: 0.1}     # or
    data: {kind: qa, path: squad.jsonl, eval_rows: 200}
          # both: max_label_tokens (96), max_train / max_eval (row caps), seed (split seed, 0)
    objective: {nll: 1.0, kl: 2.0, temperature: 1.0}
    train: {...}                                                                            # TrainConfig

Held-out splits are by document (paraphrase) and by article title (QA), so no held-out text is seen in training;
:func:`paraphrase_split` and :func:`qa_split` are what the benchmarks use to get the same split.
"""
from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..training.tasks import TaskSetup, check_keys
from ..data_paths import resolve_data_path
from .xrag import (
    PARAPHRASE_INSTRUCTIONS,
    QA_INSTRUCTION,
    XRAGModel,
    XRAGObjective,
    markers,
    pad_rows,
    paraphrase_prompt,
    rag_user_message,
)


# ------------------------------------------------------------------------------------------------------- data
def read_documents(path: str | Path) -> list[str]:
    """Documents of a plain-text corpus: blocks separated by blank lines."""
    path = resolve_data_path(path)
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [" ".join(b.split()) for b in blocks if b.strip()]


def passages(documents: Sequence[str], words: int, min_words: int | None = None) -> list[str]:
    """Consecutive windows of ``words`` words (xRAG trains on 180-token document pieces); short tails are dropped."""
    min_words = words // 2 if min_words is None else min_words
    out = []
    for doc in documents:
        tokens = doc.split()
        for i in range(0, len(tokens), words):
            piece = tokens[i : i + words]
            if len(piece) >= min_words:
                out.append(" ".join(piece))
    return out


def paraphrase_split(path: str | Path, passage_words: int = 48, eval_fraction: float = 0.1, seed: int = 0):
    """``(train passages, held-out passages)``; whole documents are held out."""
    docs = read_documents(path)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * eval_fraction))
    held = [docs[i] for i in order[:n_eval]]
    train = [docs[i] for i in order[n_eval:]]
    return passages(train, passage_words), passages(held, passage_words)


def read_qa(path: str | Path) -> list[dict[str, Any]]:
    path = resolve_data_path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = {"context", "question", "answers"} - set(row)
        if missing:
            raise ConfigError(f"{path}:{i + 1} lacks {sorted(missing)}; QA rows need context, question and answers")
    return rows


def qa_split(path: str | Path, eval_rows: int = 200, seed: int = 0):
    """``(train rows, held-out rows)``; whole articles (``title``) are held out until ``eval_rows`` is reached."""
    rows = read_qa(path)
    titles = sorted({r.get("title", str(i)) for i, r in enumerate(rows)})
    random.Random(seed).shuffle(titles)
    held_titles: set[str] = set()
    count = 0
    for t in titles:
        if count >= eval_rows:
            break
        held_titles.add(t)
        count += sum(1 for i, r in enumerate(rows) if r.get("title", str(i)) == t)
    held = [r for i, r in enumerate(rows) if r.get("title", str(i)) in held_titles]
    train = [r for i, r in enumerate(rows) if r.get("title", str(i)) not in held_titles]
    return train, held


class ListDataset(Dataset):
    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


# ------------------------------------------------------------------------------------------------- collation
class XRAGCollator:
    """Turns raw rows into an xRAG batch: encoder chunks, the student prompt with slots, labels, and (QA with
    distillation) the teacher prompt with the full text. Answers are tokenized on their own and appended to both
    prompts, so teacher and student label positions line up one to one."""

    def __init__(self, model: XRAGModel, kind: str, *, max_label_tokens: int = 96, teacher: bool = False,
                 fixed_instruction: bool = False, system: str | None = None,
                 answer_instruction: str | None = QA_INSTRUCTION):
        if kind not in ("paraphrase", "qa"):
            raise ConfigError(f"data.kind must be paraphrase or qa, got {kind!r}")
        self.model, self.kind, self.teacher = model, kind, teacher
        self.max_label_tokens = max_label_tokens
        self.fixed_instruction = fixed_instruction  # evaluation: the same instruction every time
        self.system = system  # the same system message and answer instruction the compressor generates with
        self.answer_instruction = answer_instruction

    def _answer_ids(self, text: str) -> list[int]:
        tok = self.model.tokenizer
        ids = tok(" ".join(text.split()), add_special_tokens=False)["input_ids"][: self.max_label_tokens]
        return ids + [tok.eos_token_id]

    def __call__(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        model = self.model
        documents = [r if isinstance(r, str) else r["context"] for r in rows]
        enc, counts = model.encoder_batch(documents)
        student, labels, teacher, teacher_labels = [], [], [], []
        for i, row in enumerate(rows):
            if self.kind == "paraphrase":
                index = (i if self.fixed_instruction else int(torch.randint(len(PARAPHRASE_INSTRUCTIONS), ())))
                user, answer = paraphrase_prompt(index), row
            else:
                user = rag_user_message(row["question"], markers(1), self.answer_instruction)
                answer = row["answers"][0]
            target = self._answer_ids(answer)
            prompt = model.prompt_ids(user, [counts[i]], self.system)
            student.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
            if self.teacher:
                t_user = rag_user_message(row["question"], row["context"], self.answer_instruction)
                t_prompt = model.prompt_ids(t_user, [], self.system)
                teacher.append(t_prompt + target)
                teacher_labels.append([-100] * len(t_prompt) + target)
        pad = model.tokenizer.pad_token_id
        batch = pad_rows(student, pad, labels=labels)
        batch.update({f"enc_{k}": v for k, v in enc.items()})
        if self.teacher:
            t = pad_rows(teacher, pad, labels=teacher_labels)
            batch.update(teacher_input_ids=t["input_ids"], teacher_attention_mask=t["attention_mask"],
                         teacher_labels=t["labels"])
        return batch


# ------------------------------------------------------------------------------------------------------ task
def build(recipe: dict[str, Any]) -> TaskSetup:
    from .xrag import XRAG

    objective = XRAGObjective(**check_keys("objective", recipe.get("objective"),
                                           [f.name for f in dataclasses.fields(XRAGObjective)]))
    model_cfg = dict(recipe.get("model") or {})
    init_from = model_cfg.pop("init_from", None)
    compressor = XRAG.from_pretrained(init_from, **model_cfg) if init_from else XRAG(**model_cfg)
    module = compressor.module
    module.objective = objective

    data = dict(recipe.get("data") or {})
    kind = data.pop("kind", "paraphrase")
    path = data.pop("path", None)
    if path is None:
        raise ConfigError("recipe data.path is required (a text corpus or a QA JSONL file)")
    max_label_tokens = int(data.pop("max_label_tokens", 96))
    max_train, max_eval = data.pop("max_train", None), data.pop("max_eval", None)
    seed = int(data.pop("seed", 0))
    if kind == "paraphrase":
        words, fraction = int(data.pop("passage_words", 48)), float(data.pop("eval_fraction", 0.1))
        train, held = paraphrase_split(path, words, fraction, seed)
    elif kind == "qa":
        train, held = qa_split(path, int(data.pop("eval_rows", 200)), seed)
    else:
        raise ConfigError(f"data.kind must be paraphrase or qa, got {kind!r}")
    if data:
        raise ConfigError(f"unknown data settings {sorted(data)} for task xrag")
    train, held = train[:max_train] if max_train else train, held[:max_eval] if max_eval else held
    distill = kind == "qa" and module.objective.kl > 0
    layout = {"system": compressor.config.system, "answer_instruction": compressor.config.answer_instruction}
    collate = XRAGCollator(module, kind, max_label_tokens=max_label_tokens, teacher=distill, **layout)
    eval_collate = XRAGCollator(module, kind, max_label_tokens=max_label_tokens, teacher=distill,
                                fixed_instruction=True, **layout)

    def collate_fn(rows):
        return (collate if module.training else eval_collate)(rows)

    def finalize(trained: XRAGModel, out: Path) -> None:
        compressor._module = trained  # the trainer's (unwrapped) module is the compressor's own, trained in place
        compressor.save_pretrained(out / "final")

    return TaskSetup(module, ListDataset(train), ListDataset(held), collate_fn, finalize)
