"""QA evaluation harness: how much of a prompt a method removes, and what that costs in answers.

For every system and rate it measures, per example:

- the achieved rate and ratio (tokens after / before, in the system's counting tokenizer),
- answer retention: does a gold answer survive in the compressed *context* (question and instruction excluded, since
  a question often contains its answer's words),
- reader accuracy: a reader LLM answers from the compressed prompt; exact match, F1 and contains-answer against the
  gold answers, next to the same reader on the original prompt,
- compression latency (seconds per prompt, model loading excluded).

A *system* is anything with ``name`` and ``run(examples, rate) -> list[SystemOutput]``: a hard compressor plus a
reader (:class:`HardCompressorSystem`), a soft method that feeds the reader embeddings, a KV-cache press, or
precomputed outputs of another tool (:class:`PrecomputedSystem`). Register a builder with
:func:`register_system` to make it available to ``mmcompress eval --method NAME``.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputFileError
from ..prompt import Prompt, Role
from ..registry import Registry
from .metrics import contains_answer, exact_match, f1_score
from .reader import Reader

DEFAULT_INSTRUCTION = "Answer the question using the documents."


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class QAExample:
    """One question over one or more documents (single-document files give one document)."""

    id: str
    question: str
    answers: list[str]
    documents: list[str]
    gold_index: int | None = None

    def prompt(self, instruction: str | None = DEFAULT_INSTRUCTION) -> Prompt:
        """Instruction (kept), documents (compressed), question (kept): the layout LLMLingua uses."""
        return Prompt.from_documents(self.documents, instruction=instruction, question=self.question)


def load_qa_file(path: str | Path, limit: int | None = None) -> list[QAExample]:
    """Rows ``{id, question, answers, documents[] | context | document}`` (the formats of ``../shared/data``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(f"data file not found: {path}")
    examples: list[QAExample] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(f"{path}:{lineno} is not valid JSON: {e.msg}") from None
            examples.append(_example(row, f"{path}:{lineno}"))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise InputFileError(f"{path} holds no examples")
    return examples


def _example(row: Any, where: str) -> QAExample:
    if not isinstance(row, dict):
        raise InputFileError(f"{where}: expected a JSON object")
    for key in ("question", "answers"):
        if key not in row:
            raise InputFileError(f"{where}: missing {key!r} (rows need id, question, answers and documents/context)")
    answers = row["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise InputFileError(f"{where}: 'answers' must be a non-empty list of strings")
    if "documents" in row:
        documents = row["documents"]
    elif "context" in row:
        documents = [row["context"]]
    elif "document" in row:
        documents = [row["document"]]
    else:
        raise InputFileError(f"{where}: needs 'documents' (a list), 'context' or 'document'")
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise InputFileError(f"{where}: documents must be a non-empty list of strings")
    return QAExample(id=str(row.get("id", where)), question=str(row["question"]), answers=answers,
                     documents=documents, gold_index=row.get("gold_index"))


# ---------------------------------------------------------------------------------------------------- systems
@dataclass
class SystemOutput:
    """What a system produced for one example at one rate.

    ``context`` is the compressed context as text (None for soft methods, whose retention is not defined);
    ``answer`` the reader's answer (None when no reader ran).
    """

    id: str
    origin_tokens: int
    compressed_tokens: int
    seconds: float
    context: str | None = None
    prompt: str | None = None
    answer: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class QASystem(Protocol):
    """A compressor and reader pair: compress each example at ``rate`` and answer from the result."""

    name: str

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]: ...


def context_text(prompt: Prompt) -> str:
    """The text of a prompt's context segments (what retention is measured on)."""
    return "\n\n".join(s.text for s in prompt.text_segments if s.role in (Role.CONTEXT, Role.TEXT))


class HardCompressorSystem:
    """A hard (token-dropping) compressor followed by the reader on the compressed text."""

    def __init__(self, compressor: Any, reader: Reader | None, *, name: str | None = None,
                 instruction: str | None = DEFAULT_INSTRUCTION):
        self.compressor, self.reader, self.instruction = compressor, reader, instruction
        self.name = name or compressor.name
        self._done: dict[tuple[str, float, str | None], SystemOutput] = {}  # compressions reused across runs

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]:
        todo = [ex for ex in examples if (ex.id, rate, self.instruction) not in self._done]
        if todo:
            results = self.compressor.compress_batch([ex.prompt(self.instruction) for ex in todo], rate=rate)
            for ex, r in zip(todo, results):
                self._done[ex.id, rate, self.instruction] = SystemOutput(
                    id=ex.id, origin_tokens=r.origin_tokens, compressed_tokens=r.compressed_tokens,
                    seconds=float(r.timings.get("total", 0.0)), context=context_text(r.prompt), prompt=r.text)
        outputs = [dataclasses.replace(self._done[ex.id, rate, self.instruction]) for ex in examples]
        answer_all(self.reader, outputs)
        return outputs


class PrecomputedSystem:
    """Compressed prompts produced elsewhere (another tool's outputs), read from ``{id: text}``.

    Token counts use ``tokenizer`` (the one the other methods count with); ``question`` text is removed from the
    context before measuring retention. Examples without an output are skipped.
    """

    def __init__(self, name: str, texts: dict[str, str], tokenizer: Any, reader: Reader | None = None, *,
                 seconds: dict[str, float] | None = None, instruction: str | None = DEFAULT_INSTRUCTION):
        self.name, self.texts, self.tokenizer, self.reader = name, texts, tokenizer, reader
        self.seconds, self.instruction = seconds or {}, instruction

    def run(self, examples: Sequence[QAExample], rate: float) -> list[SystemOutput]:
        outputs = []
        for ex in examples:
            if ex.id not in self.texts:
                continue
            text = self.texts[ex.id]
            original = ex.prompt(self.instruction).text
            n0, n1 = (len(x) for x in self.tokenizer([original, text], add_special_tokens=False)["input_ids"])
            outputs.append(SystemOutput(id=ex.id, origin_tokens=n0, compressed_tokens=n1,
                                        seconds=float(self.seconds.get(ex.id, float("nan"))),
                                        context=strip_prompt_parts(text, ex.question, self.instruction), prompt=text))
        answer_all(self.reader, outputs)
        return outputs


def strip_prompt_parts(text: str, question: str, instruction: str | None) -> str:
    """A compressed prompt without its (verbatim) question and instruction."""
    text = text.replace(question, "") if question else text
    return text.replace(instruction, "") if instruction else text


def answer_all(reader: Reader | None, outputs: list[SystemOutput]) -> None:
    if reader is None:
        return
    for out, answer in zip(outputs, reader.answer([o.prompt or "" for o in outputs])):
        out.answer = answer


SYSTEMS: Registry[Callable[..., QASystem]] = Registry("QA system")


def register_system(name: str):
    """Decorator for ``build(reader, **overrides) -> QASystem`` (soft methods, KV presses...)."""
    return SYSTEMS.register(name)


def random_floors(systems: Sequence[Any], reader: Reader | None, **overrides: Any) -> list[HardCompressorSystem]:
    """One seeded random drop per selection unit of the hard ``systems`` (token-level for LLMLingua, word-level for
    LLMLingua-2...), so each method is compared with a random baseline of its own granularity. Named ``random`` for
    tokens and ``random_<unit>`` otherwise."""
    from ..factory import create_compressor

    units = {getattr(getattr(s, "compressor", None), "selection_unit", None) for s in systems} - {None}
    return [HardCompressorSystem(create_compressor("random", **{**overrides, "unit": unit}), reader,
                                 name=random_floor_name(unit)) for unit in sorted(units or {"token"})]


def random_floor_name(unit: str) -> str:
    return "random" if unit == "token" else f"random_{unit}"


# ------------------------------------------------------------------------------------------------- evaluation
@dataclass
class RateResult:
    """Mean metrics of one system at one requested rate."""

    system: str
    requested_rate: float | None
    n: int
    rate: float  # achieved: compressed / original tokens, summed over examples
    ratio: float  # original / compressed tokens
    retention: float | None
    em: float | None
    f1: float | None
    contains: float | None
    latency_s: float
    latency_p50_s: float


@dataclass
class EvalReport:
    """Everything ``evaluate`` measured; :meth:`write` saves JSON, Markdown, PNG and per-example rows."""

    data: str
    n_examples: int
    rates: list[float]
    reader: str | None
    original: dict[str, float | None]
    results: list[RateResult]
    rows: list[dict[str, Any]] = field(default_factory=list)
    machine: str = field(default_factory=lambda: f"{platform.machine()} {platform.processor() or ''}".strip())
    seconds: float = 0.0

    def to_dict(self, include_rows: bool = False) -> dict[str, Any]:
        out = {"data": self.data, "n_examples": self.n_examples, "rates": self.rates, "reader": self.reader,
               "machine": self.machine, "seconds": round(self.seconds, 2), "original": self.original,
               "results": [_rounded(asdict(r)) for r in self.results]}
        if include_rows:
            out["rows"] = self.rows
        return out

    def markdown(self) -> str:
        lines = [f"QA evaluation on `{self.data}` ({self.n_examples} examples; reader: {self.reader or 'none'})", ""]
        o = self.original
        if self.reader:
            lines += [f"Original prompt: EM {_fmt(o.get('em'))}, F1 {_fmt(o.get('f1'))}, "
                      f"contains-answer {_fmt(o.get('contains'))}, answer retention {_fmt(o.get('retention'))}", ""]
        lines += ["| method | requested rate | achieved rate | ratio | answer retention | EM | F1 | contains | "
                  "latency (s/prompt) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.system} | {_fmt(r.requested_rate, 2)} | {_fmt(r.rate)} | {r.ratio:.2f}x | "
                         f"{_fmt(r.retention)} | {_fmt(r.em)} | {_fmt(r.f1)} | {_fmt(r.contains)} | {r.latency_s:.3f} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> None:
        """Answer retention and reader F1 against the achieved compression ratio, one line per method."""
        from ..extras import require

        require("matplotlib", "the evaluation plot").use("Agg")
        import matplotlib.pyplot as plt

        panels = [("retention", "answer retention")] + ([("f1", "reader F1"), ("contains", "reader contains-answer")]
                                                         if self.reader else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        systems = list(dict.fromkeys(r.system for r in self.results))
        for ax, (key, label) in zip(axes[0], panels):
            for system in systems:
                pts = sorted((r.ratio, getattr(r, key)) for r in self.results
                             if r.system == system and getattr(r, key) is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=system, linestyle="--" if system == "random" else "-")
            if self.original.get(key) is not None:
                ax.axhline(self.original[key], color="gray", linestyle=":", label="original prompt")
            ax.set_xlabel("compression ratio (original / compressed tokens)")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{Path(self.data).name}: {self.n_examples} examples")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def write(self, out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png",
                 "rows": out_dir / f"{stem}_rows.jsonl"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        paths["md"].write_text(self.markdown())
        with paths["rows"].open("w") as f:
            for row in self.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.plot(paths["png"])
        return paths


def evaluate(
    examples: Sequence[QAExample],
    systems: Sequence[QASystem],
    rates: Sequence[float],
    reader: Reader | None = None,
    *,
    instruction: str | None = DEFAULT_INSTRUCTION,
    data_name: str = "",
    progress: bool = False,
) -> EvalReport:
    """Run every system at every rate on ``examples`` and score the outputs (see the module docstring)."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    by_id = {ex.id: ex for ex in examples}
    original: dict[str, float | None] = {
        "retention": _mean([contains_answer(context_text(ex.prompt(instruction)), ex.answers) for ex in examples]),
        "em": None, "f1": None, "contains": None}
    if reader is not None:
        answers = reader.answer([ex.prompt(instruction).text for ex in examples], progress=progress)
        scored = [_answer_scores(a, ex.answers) for a, ex in zip(answers, examples)]
        for key in ("em", "f1", "contains"):
            original[key] = _mean([s[key] for s in scored])
        rows += [{"system": "original", "rate": None, "id": ex.id, "answer": a, **s}
                 for ex, a, s in zip(examples, answers, scored)]
    results = []
    for system in systems:
        for rate in rates:
            outputs = system.run(examples, rate)
            per = []
            for out in outputs:
                ex = by_id[out.id]
                record = {"system": system.name, "rate": rate, "id": out.id, "origin_tokens": out.origin_tokens,
                          "compressed_tokens": out.compressed_tokens, "seconds": out.seconds,
                          "retention": None if out.context is None else contains_answer(out.context, ex.answers),
                          "answer": out.answer}
                if out.answer is not None:
                    record.update(_answer_scores(out.answer, ex.answers))
                per.append(record)
                rows.append({**record, "prompt": out.prompt})
            results.append(_aggregate(system.name, rate, per))
            if progress:
                r = results[-1]
                print(f"{system.name} @ {rate}: ratio {r.ratio:.2f}x retention {_fmt(r.retention)} F1 {_fmt(r.f1)}",
                      flush=True)
    return EvalReport(data=data_name, n_examples=len(examples), rates=list(rates),
                      reader=reader.name if reader is not None else None, original=original, results=results,
                      rows=rows, seconds=time.perf_counter() - t0)


def _answer_scores(answer: str, golds: Sequence[str]) -> dict[str, float]:
    return {"em": exact_match(answer, golds), "f1": f1_score(answer, golds), "contains": contains_answer(answer, golds)}


def _aggregate(system: str, rate: float | None, per: list[dict[str, Any]]) -> RateResult:
    n0 = sum(r["origin_tokens"] for r in per)
    n1 = sum(r["compressed_tokens"] for r in per)
    seconds = [r["seconds"] for r in per if r["seconds"] == r["seconds"]]  # NaN: not timed
    return RateResult(
        system=system, requested_rate=rate, n=len(per), rate=n1 / n0 if n0 else 1.0,
        ratio=n0 / n1 if n1 else float("inf"),
        retention=_mean([r["retention"] for r in per if r["retention"] is not None]),
        em=_mean([r["em"] for r in per if "em" in r]), f1=_mean([r["f1"] for r in per if "f1" in r]),
        contains=_mean([r["contains"] for r in per if "contains" in r]),
        latency_s=float(np.mean(seconds)) if seconds else float("nan"),
        latency_p50_s=float(np.median(seconds)) if seconds else float("nan"),
    )


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    """Floats rounded; NaN and infinity become null (strict JSON)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            v = round(v, 6) if np.isfinite(v) else None
        out[k] = v
    return out
