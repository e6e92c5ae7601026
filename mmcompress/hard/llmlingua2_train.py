"""Training LLMLingua-2 classifiers: distil keep/drop word labels from a teacher, fine-tune a token classifier.

The paper labels words by aligning GPT-4's compressions with the original text. Here the teacher is any other
compressor of the toolkit (``selective_context``, ``longllmlingua``, ...) or a labelled JSONL file:

1. **Passages.** A plain-text corpus (documents separated by blank lines) is cut into passages of about
   ``passage_words`` words, at sentence ends.
2. **Labels.** The teacher compresses each passage at ``teacher.rate``; the character spans of the units it kept
   are cached in a JSONL file (``{"text", "kept_spans"}`` per line), so a second run, or a different classifier,
   reuses them. A teacher result without unit spans is aligned word by word with difflib instead.
3. **Classifier labels.** Each word of the classifier's tokenizer (``word_ids()``) is "keep" when most of its
   characters lie in kept spans; every token of the word carries the word's label, special tokens none (-100).
4. **Training** with the shared trainer; ``finalize`` saves an HF token-classification folder that
   ``create_compressor(folder)`` and ``LLMLingua2(classifier=folder)`` load, and (``register_default: true``)
   makes it the default classifier of ``llmlingua2``.

Recipe (``configs/train/llmlingua2-minilm.yaml``)::

    task: llmlingua2
    model: {encoder: minilm-l6, max_length: 512}
    teacher: {method: longllmlingua, rate: 0.5, options: {model: smollm2-135m}}
    data: {corpus: ../shared/data/corpus_wiki_news.txt, labels_cache: runs/.../labels.jsonl, max_passages: 600}
    train: {output_dir: runs/llmlingua2-minilm, max_steps: 300, batch_size: 16, lr: 5e-5}

Labelled data instead of a teacher: ``data.labels: file.jsonl`` with rows ``{"text", "kept_spans"}`` or
``{"words": [...], "labels": [0|1, ...]}``.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputFileError
from ..training.tasks import TaskSetup, check_keys

logger = logging.getLogger(__name__)

CONFIG_FILE = "mmcompress_config.json"


# ------------------------------------------------------------------------------------------------- passages
def corpus_passages(path: str | Path, passage_words: int = 160, max_passages: int | None = None,
                    min_words: int = 40) -> list[str]:
    """Passages of about ``passage_words`` words from a blank-line separated corpus, cut at sentence ends
    (``max_passages`` of them, evenly spread over the corpus)."""
    from ..text_units import sentence_units

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(f"corpus not found: {path}")
    passages: list[str] = []
    for doc in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        doc = " ".join(doc.split())
        if not doc:
            continue
        current, count = [], 0
        for sentence in sentence_units(doc).strings():
            current.append(sentence)
            count += len(sentence.split())
            if count >= passage_words:
                passages.append(" ".join(current))
                current, count = [], 0
        if count >= min_words:
            passages.append(" ".join(current))
    if max_passages is not None and len(passages) > max_passages:  # spread over the whole corpus, deterministically
        picks = np.unique(np.linspace(0, len(passages) - 1, max_passages).round().astype(int))
        passages = [passages[i] for i in picks]
    return passages


# --------------------------------------------------------------------------------------------------- labels
def kept_spans_from_result(result: Any) -> list[tuple[int, int]]:
    """Character spans of the passage (the prompt's first context or text segment) that a hard compressor kept:
    its unit selection when it has one, else a word alignment of the compressed text."""
    from ..prompt import Role

    for seg, sel in zip(result.original.segments, result.selections):
        if getattr(seg, "role", None) not in (Role.CONTEXT, Role.TEXT):
            continue
        if sel is not None and sel.unit == "segment":
            return [(0, len(seg.text))] if bool(sel.kept.all()) else []
        if sel is not None and len(sel.spans):
            return [(int(s), int(e)) for (s, e), k in zip(sel.spans, sel.kept) if k]
        return align_kept_spans(seg.text, result.text)
    return []


def align_kept_spans(original: str, compressed: str) -> list[tuple[int, int]]:
    """Spans of ``original``'s words that survive in ``compressed``, by a longest-matching word alignment (difflib),
    as LLMLingua-2 labels GPT-4 compressions."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", original)]
    a = [original[s:e] for s, e in words]
    b = compressed.split()
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    kept = []
    for block in matcher.get_matching_blocks():
        kept += words[block.a : block.a + block.size]
    return sorted(kept)


def distil_labels(teacher: Any, passages: Sequence[str], rate: float, cache: str | Path | None = None,
                  *, question: str | None = None, progress: bool = True, batch: int = 16) -> list[dict[str, Any]]:
    """Teacher keep-spans for every passage, read from / appended to the JSONL ``cache``. ``question`` is passed
    to question-aware teachers (LongLLMLingua), which then get each passage as a one-document prompt (they compress
    context segments; corpus passages have no question of their own)."""
    from tqdm.auto import tqdm

    done: dict[str, list] = {}
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["text"]] = row["kept_spans"]
    todo = [p for p in dict.fromkeys(passages) if p not in done]
    if todo:
        logger.warning("computing teacher labels for %d passages (%d cached)", len(todo), len(done))
        handle = None
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            handle = cache.open("a", encoding="utf-8")
        try:
            for start in tqdm(range(0, len(todo), batch), disable=not progress, desc="teacher labels"):
                chunk = todo[start : start + batch]
                # a question-aware teacher compresses documents (context), not free text: pass each passage as one
                prompts, kwargs = (([[p] for p in chunk], {"question": question}) if question else (chunk, {}))
                for text, result in zip(chunk, teacher.compress_batch(prompts, rate=rate, **kwargs)):
                    done[text] = [list(s) for s in kept_spans_from_result(result)]
                    if handle is not None:
                        handle.write(json.dumps({"text": text, "kept_spans": done[text]}, ensure_ascii=False) + "\n")
                if handle is not None:
                    handle.flush()
        finally:
            if handle is not None:
                handle.close()
    return [{"text": p, "kept_spans": done[p]} for p in passages]


def read_labelled_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"text", "kept_spans"}`` or ``{"words", "labels"}`` (text = words joined by spaces)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(f"labelled data not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFileError(f"{path}:{lineno} is not valid JSON: {e.msg}") from None
        if "kept_spans" in row and "text" in row:
            rows.append({"text": row["text"], "kept_spans": row["kept_spans"]})
        elif "words" in row and "labels" in row:
            if len(row["words"]) != len(row["labels"]):
                raise InputFileError(f"{path}:{lineno}: {len(row['words'])} words but {len(row['labels'])} labels")
            text, spans, pos = [], [], 0
            for w, label in zip(row["words"], row["labels"]):
                if label:
                    spans.append([pos, pos + len(w)])
                text.append(w)
                pos += len(w) + 1
            rows.append({"text": " ".join(text), "kept_spans": spans})
        else:
            raise InputFileError(f"{path}:{lineno}: needs text + kept_spans, or words + labels")
    return rows


def word_labels(word_spans: np.ndarray, kept_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """1 for words whose characters lie mostly inside kept spans, else 0."""
    covered = np.zeros(int(word_spans[:, 1].max()) + 1 if len(word_spans) else 0, dtype=bool)
    for s, e in kept_spans:
        covered[int(s) : int(e)] = True
    out = np.zeros(len(word_spans), dtype=np.int64)
    for i, (s, e) in enumerate(word_spans):
        out[i] = int(covered[s:e].mean() > 0.5) if e > s else 0
    return out


# -------------------------------------------------------------------------------------------------- dataset
class WordLabelDataset(torch.utils.data.Dataset):
    """Token-level examples ``{input_ids, labels}`` from labelled passages; long passages become several chunks."""

    def __init__(self, rows: Sequence[dict[str, Any]], scorer: Any):
        self.items: list[tuple[list[int], list[int]]] = []
        tokenized = scorer.tokenize([r["text"] for r in rows])
        for row, tk in zip(rows, tokenized):
            labels = word_labels(tk.spans, row["kept_spans"])
            token_labels = np.where(tk.word_of_token >= 0, labels[np.maximum(tk.word_of_token, 0)], -100)
            for s, e in scorer.chunks(tk, row["text"]):
                ids = scorer.prefix + tk.ids[s:e].tolist() + scorer.suffix
                lab = [-100] * len(scorer.prefix) + token_labels[s:e].tolist() + [-100] * len(scorer.suffix)
                self.items.append((ids, lab))
        self.pad_id = scorer.tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]

    def collate(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, (ids, lab) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.as_tensor(ids)
            labels[i, : len(lab)] = torch.as_tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------------------------------- module
class TokenClassifierModule(nn.Module):
    """The trainee: an HF token classifier with cross-entropy on word labels (the trainer's contract)."""

    def __init__(self, model: Any, tokenizer: Any, compressor_config: dict[str, Any] | None = None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.compressor_config = compressor_config or {}

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = self.model(**batch)
        return {"loss": out.loss, **_label_metrics(out.logits.detach(), batch["labels"])}

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        out = self.model(**batch)
        return {"loss": float(out.loss), **_label_metrics(out.logits, batch["labels"])}

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / CONFIG_FILE).write_text(json.dumps({"compressor": "llmlingua2", "config": self.compressor_config},
                                                   indent=2))
        return path


def _label_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    valid = labels != -100
    pred = logits.argmax(-1)[valid]
    gold = labels[valid]
    tp = float(((pred == 1) & (gold == 1)).sum())
    precision = tp / max(1.0, float((pred == 1).sum()))
    recall = tp / max(1.0, float((gold == 1).sum()))
    return {"accuracy": float((pred == gold).float().mean()) if len(gold) else 0.0,
            "keep_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


# ----------------------------------------------------------------------------------------------------- task
def load_classifier_for_training(encoder: str, num_labels: int = 2) -> tuple[Any, Any]:
    """An encoder (alias, HF id or folder) with a fresh 2-label token-classification head, and its tokenizer."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from ..models.loading import resolve_model

    path = resolve_model(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=num_labels, id2label={0: "drop", 1: "keep"}, label2id={"drop": 0, "keep": 1})
    return model, tokenizer


def build_llmlingua2_task(recipe: dict[str, Any]) -> TaskSetup:
    """Recipe sections: ``model`` (encoder, max_length), ``teacher`` (method, rate, options, question) or
    ``data.labels``, ``data`` (corpus, labels_cache, passage_words, max_passages, eval_fraction), ``export_dir``
    (where the finished classifier is copied), ``register_default``."""
    from ..scoring.token_classifier import TokenClassifierScorer

    model_cfg = check_keys("model", recipe.get("model"), ("encoder", "max_length", "token_to_word"))
    data_cfg = check_keys("data", recipe.get("data"),
                          ("labels", "corpus", "labels_cache", "passage_words", "max_passages", "eval_fraction"))
    teacher_cfg = check_keys("teacher", recipe.get("teacher"), ("method", "rate", "options", "question"))
    encoder = model_cfg.get("encoder", "minilm-l6")
    model, tokenizer = load_classifier_for_training(encoder)
    scorer = TokenClassifierScorer(model, tokenizer, max_length=model_cfg.get("max_length"))

    if data_cfg.get("labels"):
        rows = read_labelled_jsonl(data_cfg["labels"])
    else:
        if not teacher_cfg.get("method"):
            raise ConfigError("the llmlingua2 recipe needs teacher.method (a compressor name) or data.labels (JSONL)")
        if not data_cfg.get("corpus"):
            raise ConfigError("the llmlingua2 recipe needs data.corpus (a text file) to label with the teacher")
        from ..factory import create_compressor

        passages = corpus_passages(data_cfg["corpus"], int(data_cfg.get("passage_words", 160)),
                                   data_cfg.get("max_passages"))
        teacher = create_compressor(teacher_cfg["method"], **dict(teacher_cfg.get("options") or {}))
        rows = distil_labels(teacher, passages, float(teacher_cfg.get("rate", 0.5)), data_cfg.get("labels_cache"),
                             question=teacher_cfg.get("question"),
                             progress=bool(recipe.get("train", {}).get("progress", True)))
    if not rows:
        raise ConfigError("the llmlingua2 recipe found no labelled passages")
    n_eval = int(round(len(rows) * float(data_cfg.get("eval_fraction", 0.05))))
    train_rows, eval_rows = rows[n_eval:], rows[:n_eval]
    train_set = WordLabelDataset(train_rows, scorer)
    eval_set = WordLabelDataset(eval_rows, scorer) if eval_rows else None
    compressor_config = {"token_to_word": model_cfg.get("token_to_word", "mean")}
    if model_cfg.get("max_length"):
        compressor_config["max_seq_len"] = int(model_cfg["max_length"])
    module = TokenClassifierModule(model, tokenizer, compressor_config)

    def finalize(trained: TokenClassifierModule, output_dir: Path) -> Path:
        folder = trained.save_pretrained(output_dir / "classifier")
        (output_dir / "eval_passages.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows))
        if recipe.get("export_dir"):  # a copy outside the run folder (e.g. the mmcompress cache) outlives the run
            import shutil

            folder = Path(shutil.copytree(folder, Path(recipe["export_dir"]).expanduser(), dirs_exist_ok=True))
        if recipe.get("register_default"):
            from .llmlingua2 import register_default_classifier

            register_default_classifier(folder)
        return folder

    return TaskSetup(module=module, train_dataset=train_set, eval_dataset=eval_set, collate_fn=train_set.collate,
                     finalize=finalize)
