"""Training objectives of encoder-based soft methods and their training tasks.

Objectives (ICAE, 500xCompressor), each an example of ``(context ids -> compressed, tail ids -> decoder text,
labels)``:

- **autoencoding** ("ae"): regenerate the compressed text from the slots: tail = text + EOS, all labelled;
- **continuation** ("lm"): compress a prefix, predict the text that follows: tail = continuation, labelled after the
  first ``lm_skip_tokens`` (ICAE's ``leave_tokens_for_lm``);
- **QA** ("qa", ICAE's [FT]): compress a context, answer a question: tail = question prompt (no loss) + answer + EOS.

The loss is computed where labels are, only: hidden states are sliced *before* the LM head, so a step never builds
full-vocabulary logits for the compressed context or the prompt, and only the labelled rows go through float32
cross-entropy (:func:`sliced_lm_loss`); :func:`chunked_lm_loss`, the default, also never holds those rows'
logits at once.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .chunking import TASK_IDS, make_chunks

IGNORE = -100


def labelled_rows(hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None):
    """``(hidden rows [M, D], their next tokens [M], their float32 weights [M] or None)``: the rows with a label."""
    targets = labels[:, 1:]
    where = targets != IGNORE
    return hidden[:, :-1][where], targets[where], None if weights is None else weights[:, 1:][where].float()


def sliced_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module,
                   weights: torch.Tensor | None = None):
    """Next-token cross-entropy over the labelled positions of ``labels`` ``[B, T]`` (hidden ``[B, T, D]``).

    Position ``t`` predicts ``labels[t + 1]``. Returns ``(mean loss, token accuracy)``; only the ``M`` labelled rows
    go through ``lm_head``, so the logits are ``[M, V]`` instead of ``[B, T, V]``. ``weights`` ``[B, T]`` (aligned
    with ``labels``) makes the loss the weighted mean over the labelled tokens; the accuracy stays unweighted.
    """
    picked, gold, w = labelled_rows(hidden, labels, weights)
    if picked.shape[0] == 0:
        zero = hidden.sum() * 0.0
        return zero, zero.detach()
    logits = lm_head(picked).float()
    if w is None:
        loss = F.cross_entropy(logits, gold)
    else:
        loss = (F.cross_entropy(logits, gold, reduction="none") * w).sum() / w.sum()
    accuracy = (logits.detach().argmax(-1) == gold).float().mean()
    return loss, accuracy


# float32 logits held at once by chunked_lm_loss: under glibc's largest mmap threshold (32 MiB), so each chunk's
# buffer is reused from the heap; a larger allocation is mapped afresh and page-faulted in at every step
CHUNK_BYTES = 24 << 20


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module,
                    weights: torch.Tensor | None = None, chunk_bytes: int = CHUNK_BYTES):
    """:func:`sliced_lm_loss` with the LM head and the cross-entropy fused, a chunk of labelled rows at a time.

    The ``[M, V]`` float32 logits (100 MB for 512 rows of SmolLM2's 49,152-word vocabulary) are never held at once:
    each chunk's logits give its loss, accuracy and the gradient of its hidden rows (``(softmax - onehot) W``),
    computed in the forward pass, and are freed; the backward pass only scales the stored gradient (the fused
    linear cross-entropy of Liger-Kernel). Same values as :func:`sliced_lm_loss` up to summation order: logits in
    the head's dtype, softmax in float32, the gradient cast back to the head's dtype before its matmul, as autograd
    does there. A head that trains, has a bias or is not a plain linear layer goes through :func:`sliced_lm_loss`.
    """
    weight = getattr(lm_head, "weight", None)
    if (type(lm_head) is not torch.nn.Linear or lm_head.bias is not None or weight.requires_grad
            or weight.dtype != hidden.dtype):
        return sliced_lm_loss(hidden, labels, lm_head, weights)
    picked, gold, row_weights = labelled_rows(hidden, labels, weights)
    if picked.shape[0] == 0:
        return sliced_lm_loss(hidden, labels, lm_head, weights)  # its zero loss, still connected to the graph
    if row_weights is None:
        row_weights = torch.ones(gold.shape, device=gold.device)
    rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    loss, correct = LinearCrossEntropy.apply(picked, weight, gold, row_weights / row_weights.sum(), rows)
    return loss, correct / gold.numel()


class LinearCrossEntropy(torch.autograd.Function):
    """``sum_i w_i CE(h_i W^T, y_i)`` over chunks of ``rows`` rows; the gradient of ``h`` is made in the forward."""

    @staticmethod
    def forward(ctx, picked, weight, gold, row_weights, rows):
        needs_grad = picked.requires_grad
        grad = torch.empty_like(picked) if needs_grad else None
        loss = picked.new_zeros((), dtype=torch.float32)
        correct = picked.new_zeros((), dtype=torch.float32)
        for start in range(0, picked.shape[0], rows):
            end = min(start + rows, picked.shape[0])
            logits = (picked[start:end] @ weight.T).float()  # [rows, V]
            y, w = gold[start:end], row_weights[start:end]
            gold_logit = logits.gather(1, y[:, None]).squeeze(1)
            top, best = logits.max(-1)  # one pass: the softmax's shift and the accuracy's argmax
            correct += (best == y).sum()
            exp = logits.sub_(top[:, None]).exp_()  # in place: the chunk holds one [rows, V] buffer
            total = exp.sum(-1)
            loss += ((top + total.log() - gold_logit) * w).sum()
            if needs_grad:  # d loss / d logits = w (softmax - onehot)
                probs = exp.mul_((w / total)[:, None])
                probs[torch.arange(end - start, device=probs.device), y] -= w
                grad[start:end] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None


def full_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module,
                 weights: torch.Tensor | None = None):
    """The unoptimised reference: full-vocabulary float32 logits at every position, then the masked loss."""
    if weights is not None:
        raise ConfigError("the full-vocabulary reference loss takes no loss weights")
    logits = lm_head(hidden).float()
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    where = labels[:, 1:] != IGNORE
    accuracy = (logits[:, :-1].argmax(-1)[where] == labels[:, 1:][where]).float().mean()
    return loss, accuracy


LM_LOSSES = {"chunked": chunked_lm_loss, "sliced": sliced_lm_loss, "full": full_lm_loss}  # SlotModel.lm_loss


# ------------------------------------------------------------------------------------------------ examples
@dataclass
class Example:
    """One training example: ``context`` is compressed; the decoder reads ``prompt`` (no loss) then ``target``."""

    context: list[int]
    prompt: list[int]
    target: list[int]
    task: str
    skip: int = 0  # leading target tokens without loss (continuation)
    question: list[int] = field(default_factory=list)  # what a question-aware encoder reads before each chunk
    weights: list[float] | None = None  # loss weight of each target token (None: all 1)
    focus: list[bool] | None = None  # question-focused pooling: the context tokens pooled at focus_ratio
    focus_ratio: int = 1


def collate(examples: list[Example], chunk_tokens: int, pad_id: int, *, bos_id: int | None = None,
            chunk_pad_id: int | None = None, pad_to: int = 0, marker_ids: dict[str, list[int]] | None = None,
            question_aware: bool = False, pool_ratio: int = 0) -> dict[str, torch.Tensor]:
    """Batch examples: chunks for the encoder (left-padded, or right-padded to ``pad_to`` with ``chunk_pad_id``,
    attended; ``bos_id`` before each context), right-padded tails with labels for the decoder.
    ``question_aware``: each example's ``question`` ids are read before each of its chunks (``chunk_pool_mask``
    marks the chunks' own tokens).

    ``marker_ids`` (fixed marker tokens per task, as :class:`~mmcompress.soft.encoder.EncoderConfig` resolves
    them): each tail starts with its task's tokens (no loss) and ``fixed_marker`` tells the model to leave out its
    learned marker.

    ``pool_ratio`` (mean-pooling): examples with a ``focus`` get their question-focused pooling groups
    (``chunk_groups``), the others uniform ones."""
    contexts = [([bos_id] if bos_id is not None else []) + e.context for e in examples]
    chunk_pad = pad_id if chunk_pad_id is None else chunk_pad_id
    chunks = make_chunks(contexts, chunk_tokens, chunk_pad, pad_to=pad_to,
                         prefixes=[e.question for e in examples] if question_aware else None)
    fixed = [list((marker_ids or {}).get(e.task) or []) for e in examples]
    tails = [f + e.prompt + e.target for f, e in zip(fixed, examples)]
    width = max(len(t) for t in tails)
    tail_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for b, (e, t) in enumerate(zip(examples, tails)):
        tail_ids[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        tail_mask[b, : len(t)] = 1
        start = len(fixed[b]) + len(e.prompt) + e.skip
        labels[b, start : len(t)] = torch.tensor(t[start:], dtype=torch.long)
    batch = {"chunk_ids": chunks.ids, "chunk_mask": chunks.mask, "chunk_span": chunks.span,
             "chunk_index": chunks.index, "tail_ids": tail_ids, "tail_mask": tail_mask, "labels": labels,
             "task": torch.tensor([TASK_IDS[e.task] for e in examples], dtype=torch.long)}
    if chunks.pool_mask is not None:
        batch["chunk_pool_mask"] = chunks.pool_mask
    if pool_ratio and any(e.focus is not None for e in examples):
        batch["chunk_groups"] = focus_groups(examples, chunks, pool_ratio, bos=bos_id is not None)
    if marker_ids is not None:
        batch["fixed_marker"] = torch.ones(len(examples), dtype=torch.bool)
    if any(e.weights is not None for e in examples):  # each target token's loss weight, 1 elsewhere
        batch["label_weights"] = torch.ones(len(examples), width)
        for b, e in enumerate(examples):
            if e.weights is not None:
                first = len(fixed[b]) + len(e.prompt)
                batch["label_weights"][b, first : first + len(e.target)] = torch.tensor(e.weights)
    return batch


def focus_groups(examples: list[Example], chunks: Any, pool_ratio: int, bos: bool) -> torch.Tensor:
    """The ``[N, W]`` pooling groups of a batch's chunks: question-focused for examples with a ``focus``."""
    from .focus import focused_groups, group_tensor

    layouts = []
    for e, own in zip(examples, chunks.own_sizes_per_span()):
        layout = None
        if e.focus is not None:
            layout = focused_groups(([False] if bos else []) + list(e.focus), own, pool_ratio, e.focus_ratio)
        layouts += layout if layout is not None else [None] * len(own)
    return group_tensor(chunks.own_mask, pool_ratio, layouts)


def text_windows(text: str, tokenizer: Any, window: int, stride: int | None = None) -> list[list[int]]:
    """Token windows of ``window`` ids over a text (non-overlapping by default)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stride = stride or window
    return [ids[i : i + window] for i in range(0, max(1, len(ids) - window + 1), stride) if len(ids[i : i + window]) == window]


class PretrainDataset(torch.utils.data.Dataset):
    """Autoencoding + continuation examples from token windows of plain text.

    Each item is a window of ``context_tokens + continuation_tokens`` ids. With probability ``lm_ratio`` (fixed per
    item by a seeded draw, so every epoch and every resumed run sees the same examples) it is a continuation
    example (compress the first ``context_tokens``, predict the rest); otherwise an autoencoding example of the
    first ``context_tokens``. ``weights`` (one list per window, one float per id) are the target tokens' loss
    weights (the EOS after an autoencoded window weighs 1).
    """

    def __init__(self, windows: list[list[int]], context_tokens: int, continuation_tokens: int, lm_ratio: float,
                 eos_id: int, seed: int = 0, lm_skip_tokens: int = 0, weights: list[list[float]] | None = None):
        if weights is not None and [len(w) for w in weights] != [len(w) for w in windows]:
            raise ValueError("weights must give one float per id of every window")
        self.windows, self.weights = windows, weights
        self.context_tokens, self.continuation_tokens = context_tokens, continuation_tokens
        rng = random.Random(seed)
        self.is_lm = [continuation_tokens > 0 and rng.random() < lm_ratio for _ in windows]
        self.eos_id, self.lm_skip_tokens = eos_id, lm_skip_tokens

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Example:
        w, weights = self.windows[i], (self.weights[i] if self.weights is not None else None)
        context = w[: self.context_tokens]
        if self.is_lm[i]:
            return Example(context, [], w[self.context_tokens :], "lm", skip=self.lm_skip_tokens,
                           weights=None if weights is None else list(weights[self.context_tokens :]))
        return Example(context, [], context + [self.eos_id], "ae",
                       weights=None if weights is None else list(weights[: self.context_tokens]) + [1.0])


class QADataset(torch.utils.data.Dataset):
    """QA fine-tuning examples from SQuAD-style JSONL rows ``{context, question, answers}``."""

    def __init__(self, rows: list[dict[str, Any]], tokenizer: Any, max_context_tokens: int, template: str,
                 focus: Any = None):
        self.examples = []
        for row in rows:
            answers = row.get("answers") or []
            answer = answers[0] if answers and isinstance(answers[0], str) else (answers[0].get("text") if answers else None)
            if not answer:
                continue
            # one tokenizer call gives the ids and, for question_focus, each token's character span
            encoded = tokenizer(row["context"], add_special_tokens=False, return_offsets_mapping=focus is not None)
            context = encoded["input_ids"][:max_context_tokens]
            example = qa_example(tokenizer, template, context, row["question"], answer)
            if focus is not None:  # (text, question, token offsets) -> (focus per token, ratio): question_focus
                offsets = encoded["offset_mapping"][:max_context_tokens]
                example.focus, example.focus_ratio = focus(row["context"], row["question"], offsets)
            self.examples.append(example)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def qa_example(tokenizer: Any, template: str, context: list[int], question: str, answer: str) -> Example:
    """A QA example: compress ``context``; the decoder reads ``template`` around the question, then answers."""
    prompt = tokenizer(template.format(question=question), add_special_tokens=False)["input_ids"]
    # after a template that ends a line (a chat turn's "assistant\n") the answer starts without a space
    lead = "" if template.endswith(("\n", " ")) else " "
    target = tokenizer(lead + answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(context, prompt, target, "qa", question=encoder_question_ids(tokenizer, question))


# a cloze question about a window: the words around one of its named entities, the entity blanked out
CLOZE_QUESTION = 'Which words fill the blank in "{left} ___{right}"?'
CLOZE_LEFT_TOKENS, CLOZE_RIGHT_TOKENS, CLOZE_MAX_ANSWER_TOKENS = 12, 6, 8


class ClozeDataset(torch.utils.data.Dataset):
    """Self-supervised QA from plain text: compress a window, then name the entity that a quoted piece of the same
    window leaves blank (``CLOZE_QUESTION``, read through the recipe's QA template). Unlike reconstruction, which
    reads the soft prompt in order, the decoder must find a place in it by content, as a reading question asks;
    and the corpus gives far more such questions than a QA file.

    ``entity_marks`` (one bool per id of each window) mark the tokens inside spaCy's named entities and numbers; a
    window gives up to ``per_window`` examples, each blanking a different run of marked tokens (at most
    ``CLOZE_MAX_ANSWER_TOKENS``, with at least 4 tokens before it and one after it in the window, not repeated in its
    quoted surroundings), drawn with ``seed``."""

    def __init__(self, windows: list[list[int]], entity_marks: list[list[bool]], tokenizer: Any, template: str,
                 per_window: int = 1, seed: int = 0):
        if [len(m) for m in entity_marks] != [len(w) for w in windows]:
            raise ValueError("entity_marks must give one bool per id of every window")
        rng = random.Random(seed)
        self.examples = []
        for ids, marks in zip(windows, entity_marks):
            # a run that ends the window may be an entity cut in two
            runs = [(a, b) for a, b in marked_runs(marks) if a >= 4 and b - a <= CLOZE_MAX_ANSWER_TOKENS and b < len(ids)]
            rng.shuffle(runs)
            made = 0
            for a, b in runs:
                if made == per_window:
                    break
                answer = tokenizer.decode(ids[a:b]).strip()
                left = tokenizer.decode(ids[max(0, a - CLOZE_LEFT_TOKENS) : a]).strip()
                right = tokenizer.decode(ids[b : b + CLOZE_RIGHT_TOKENS]).strip()
                if not answer or answer in left or answer in right:
                    continue
                space = " " if right[:1].isalnum() else ""  # "in ___ in 1850" but "in ___, the"
                question = CLOZE_QUESTION.format(left=left, right=space + right)
                self.examples.append(qa_example(tokenizer, template, list(ids), question, answer))
                made += 1

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def marked_runs(marks: list[bool]) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each run of consecutive True values."""
    runs, start = [], 0
    for mark, run in itertools.groupby(marks):
        end = start + len(list(run))
        if mark:
            runs.append((start, end))
        start = end
    return runs


QA_TEMPLATE = "Question: {question}\nAnswer:"
# SmolLM2-Instruct's own chat turn around the question, after the soft (or text) context: its full-context answers
# contain the gold answer about twice as often as with QA_TEMPLATE (validation rows, docs/soft.md)
CHAT_QA_TEMPLATE = ("<|im_start|>user\n{question} Answer with a few words from the text above.<|im_end|>\n"
                    "<|im_start|>assistant\n")

QA_TEMPLATES = {"plain": QA_TEMPLATE, "chatml": CHAT_QA_TEMPLATE}


def qa_template(spec: str) -> str:
    """A named template (:data:`QA_TEMPLATES`) or a literal one with ``{question}``."""
    template = QA_TEMPLATES.get(spec, spec)
    if not isinstance(template, str) or "{question}" not in template:
        raise ConfigError(f"qa_template must be one of {sorted(QA_TEMPLATES)} or contain {{question}}, got {spec!r}")
    return template


# what a question-aware encoder reads before each chunk of the context (meanpool ``question_aware``)
ENCODER_QUESTION = "Question: {question}\n"


def encoder_question_ids(tokenizer: Any, question: str) -> list[int]:
    """The ids a question-aware encoder reads before each chunk: :data:`ENCODER_QUESTION` around the question."""
    return tokenizer(ENCODER_QUESTION.format(question=question.strip()), add_special_tokens=False)["input_ids"]


def split_corpus(path: str | Path, eval_fraction: float) -> tuple[str, str]:
    """The corpus as (train text, held-out text): the last ``eval_fraction`` of its lines are held out."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training text not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    cut = int(len(lines) * (1.0 - eval_fraction))
    return "\n".join(lines[:cut]), "\n".join(lines[cut:])


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"QA data not found: {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
