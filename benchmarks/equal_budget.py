"""Prompt compression against attention-side methods at the same budget.

Every method answers the same questions with SmolLM2-135M-Instruct as reader through the QA harness's cache systems
(:mod:`mmcompress.evaluation.cache_systems`, built by :func:`mmcompress.evaluation.systems.build_system` with
``through_cache=True``): the method prepares a KV cache standing in for the context (chat-template prefix,
instruction, documents), the question and the chat-template suffix are read after it, and the answer is decoded
greedily, one path for every family (:func:`mmcompress.models.decoding.generate_from_cache`). At budget ``r``:

- hard methods keep ``r`` of the documents' tokens (instruction and question untouched) and the reader prefills
  what is left;
- KV presses prefill the whole context and keep ``r`` of its KV entries per layer;
- soft methods (``gist``, ``autocompressor``, ``icae``, ``kv``: saved folders or checkpoints, ``--gist`` ...)
  compress the documents as one span at ratio ``1/r`` (``chunk_tokens = num_slots / r``); their own decoder reads the
  span laid out as their ``generate()`` does, after the chat prefix and instruction;
- pipelines: ``HARD+PRESS`` (e.g. ``selective_context+snapkv``) applies the hard method and then the press, each
  at ``sqrt(r)``; ``HARD+SOFT`` (e.g. ``longllmlingua+icae``) is an :class:`mmcompress.Pipeline`: the hard method
  at ``--pipeline-hard-rate`` (2x), then the soft method at the rest of the budget (``r / 0.5``: 1x, 2x, 5x).

Measured per example: answer EM / F1 / contains-answer, the KV cache the answer is decoded from (entries and MiB at
decode start, peak MiB at the end of decoding: on CPU the cache is the memory a method changes; process RSS is
dominated by the weights), time to compress, time to prefill, decode tokens per second.

Runs append to ``benchmarks/results/equal_budget.json`` (rows of one (data, method) are replaced), so the table
can be built by several short runs; the Markdown table and the PNG plot are rebuilt from all rows each time
(``--fresh``: the table holds this run's rows only). Compressions (hard results, soft spans) are cached on disk
(``--cache``, keyed by method, its config and weights, rate and the exact prompt) together with the seconds they
took when computed, so a rerun only repeats the reader's prefill and decoding and reports the original
compression times.

    PYTHONPATH=. python benchmarks/equal_budget.py --data multidoc --methods full random selective_context \
        knorm snapkv streaming_llm sliding_window icae longllmlingua+icae --icae runs/soft/icae --n 12
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/common.py, also when loaded by path (tests)

import mmcompress  # noqa: E402,F401  (registers every compressor)
from mmcompress.errors import MMCompressError  # noqa: E402
from mmcompress.evaluation.harness import QAExample, load_qa_file  # noqa: E402
from mmcompress.evaluation.metrics import contains_answer, exact_match, f1_score  # noqa: E402
from mmcompress.evaluation.reader import Reader, ReaderConfig  # noqa: E402
from mmcompress.evaluation.systems import build_system  # noqa: E402
from common import machine_line, markdown_table, write_results  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)
from compression_cache import CompressionCache, weights_source  # noqa: E402

SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()), ROOT.parent / "shared")) / "data"
DATA = {"multidoc": SHARED / "multidoc_qa_dev.jsonl", "longdoc": SHARED / "longdoc_qa.jsonl"}
RESULTS = ROOT / "benchmarks" / "results"
TITLE = "Equal-budget QA benchmark, reader SmolLM2-135M-Instruct"
COLUMNS = ["data", "n", "method", "family", "budget", "kv_fraction", "kv_mib", "peak_kv_mib", "em", "f1", "contains",
           "compress_s", "prefill_s", "decode_tok_s"]


def soft_methods() -> list[str]:
    from mmcompress.registry import list_compressors

    return list_compressors("soft")


def kv_bytes_per_entry(model: Any) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * next(model.parameters()).element_size())


def soft_note(name: str, path: str | Path | None) -> str:
    """Which weights a soft method's rows come from."""
    if path and Path(path, "trainable.safetensors").is_file() and not Path(path, "mmcompress_config.json").is_file():
        return f"checkpoint {Path(path).name} of a CPU run of configs/train/{name}.yaml ({path})"
    if path and Path(path, "mmcompress_config.json").is_file():
        return f"{training_note(path)} ({path})"
    return "UNTRAINED (no checkpoint given): a floor, not the method's quality"


def method_notes(args: argparse.Namespace, methods: list[str]) -> dict[str, str]:
    """What the table's footnotes say about the methods of a run (also when all their rows are reused)."""
    notes, soft = {}, soft_methods()
    for method in methods:
        parts = method.split("+")
        for part in parts:
            if part in soft:
                notes[part] = soft_note(part, getattr(args, part, None))
            if part == "llmlingua2":
                from mmcompress.hard.llmlingua2 import default_classifier

                notes[part] = f"the default registered classifier ({default_classifier()})"
        if "+" in method and parts[1] in soft:
            notes[method] = (f"mmcompress.Pipeline([{parts[0]} at rate {args.pipeline_hard_rate}, {parts[1]}]): the "
                             f"soft stage compresses each kept document at ratio {args.pipeline_hard_rate:g} / budget")
        elif "+" in method:
            notes[method] = f"{parts[0]} at rate sqrt(budget), then the {parts[1]} press at sqrt(budget)"
    return notes


def training_note(path: str | Path) -> str:
    """How many steps the run that saved ``path`` logged (its ``log.jsonl`` sits in the folder or beside it)."""
    trained = Path(path) / "TRAINED.json"  # written by benchmarks/soft_reconstruction_curve.py
    if trained.is_file():
        info = json.loads(trained.read_text())
        return (f"trained {info.get('step')} steps of batch {info.get('batch_size')} (lr {info.get('lr')}, "
                f"bf16 {info.get('bf16')}) by benchmarks/soft_reconstruction_curve.py: autoencoding only, so the "
                "[FT] (qa) marker the rows use is untrained")
    for log in (Path(path) / "log.jsonl", Path(path).parent / "log.jsonl"):
        if log.is_file():
            steps = [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
            return f"trained {max([s for s in steps if s] or [0])} steps on CPU"
    return "trained (no training log beside it)"

def classifier_source() -> dict[str, Any]:
    """llmlingua2's default registered classifier (it changes when a training run registers a new one)."""
    from mmcompress.hard.llmlingua2 import default_classifier

    path = default_classifier()
    weights = Path(path, "model.safetensors") if path else None
    stat = weights.stat() if weights is not None and weights.is_file() else None
    return {"path": path, "size": stat and stat.st_size, "mtime": stat and stat.st_mtime}


# ------------------------------------------------------------------------------------------------ the compressors
class Compressors:
    """``make(name, rate=None)`` for :func:`~mmcompress.evaluation.systems.build_system`: hard methods by name
    (``rate``: a pipeline stage's own rate; llmlingua2 at its global budget), soft methods from the weights named on
    the command line, every one wrapped in the disk cache. ``preloaded`` maps names (``name@rate`` for a pipeline
    stage) to ready compressors (tests)."""

    def __init__(self, args: argparse.Namespace, cache: CompressionCache, preloaded: dict[str, Any] | None = None):
        self.args, self.cache = args, cache
        self.made: dict[str, Any] = {}
        for key, compressor in (preloaded or {}).items():
            self.made[key] = self.wrap(compressor, {"name": f"preloaded {key}"})

    def __call__(self, name: str, rate: float | None = None) -> Any:
        key = name if rate is None else f"{name}@{rate}"
        if key not in self.made:
            compressor, source = self.load(name, rate)
            self.made[key] = self.wrap(compressor, source)
        return self.made[key]

    def wrap(self, compressor: Any, source: dict[str, Any]) -> Any:
        if compressor.family == "hard":
            return self.cache.wrap_hard(compressor, hard_fingerprint(compressor))
        return self.cache.wrap_soft(compressor, source)

    def load(self, name: str, rate: float | None) -> tuple[Any, dict[str, Any]]:
        from mmcompress import create_compressor

        if name not in soft_methods():
            # llmlingua2's default is llmlingua's per-chunk rate; an equal-budget comparison needs its global budget
            options = {"budget": "global"} if name == "llmlingua2" else {}
            return (create_compressor(name, **options) if rate is None else
                    create_compressor(name, rate=rate, **options)), {}
        path = getattr(self.args, name, None)
        if path and Path(path, "trainable.safetensors").is_file() and Path(path).parent.joinpath("recipe.yaml").is_file() \
                and not Path(path, "mmcompress_config.json").is_file():  # a trainer checkpoint of a recipe run
            import yaml
            from safetensors.torch import load_file

            from mmcompress.registry import get_compressor_class

            recipe = yaml.safe_load(Path(path).parent.joinpath("recipe.yaml").read_text())
            cls = get_compressor_class(name)
            compressor = cls(cls.config_class.from_dict(recipe["model"]))
            compressor.load_trainable(load_file(str(Path(path, "trainable.safetensors"))), source=str(path))
            return compressor, weights_source(path)
        if path and Path(path, "mmcompress_config.json").is_file():
            return create_compressor(str(path)), weights_source(path)
        return create_compressor(name), {"path": None, "untrained": name}


def hard_fingerprint(compressor: Any) -> dict[str, Any]:
    config = {k: v for k, v in compressor.config.to_dict().items() if k not in ("rate", "target_tokens")}
    if compressor.name == "llmlingua2" and not config.get("classifier"):
        config["classifier"] = classifier_source()
    return config


# ------------------------------------------------------------------------------------------------ the run
def answer(system: Any, ex: QAExample, rate: float, data: str, per_entry: int, cache: CompressionCache) -> dict[str, Any]:
    """One example through one system at one budget: the row of the table it adds."""
    cache.spent = 0.0
    out = system.answer(ex, rate)
    e = out.extras
    entries, full = e["kv_entries"], e["context_tokens"]
    extras = {k: v for k, v in e.items() if k not in ROW_FROM_EXTRAS}
    return {"data": data, "method": system.name, "family": system.family, "rate": rate, "id": ex.id,
            "context_tokens": full, "kv_entries": entries, "kv_fraction": entries / full,
            "kv_mib": entries * per_entry / 2**20,
            "peak_kv_mib": (entries + e["question_tokens"] + e["new_tokens"]) * per_entry / 2**20,
            "compress_s": cache.spent,  # as measured when each compression was first computed (this run or earlier)
            "prefill_s": e["prefill_s"], "decode_tok_s": e["decode_tok_s"], "answer": out.answer,
            "em": exact_match(out.answer, ex.answers), "f1": f1_score(out.answer, ex.answers),
            "contains": contains_answer(out.answer, ex.answers),
            "computed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extras}


ROW_FROM_EXTRAS = ("kv_entries", "context_tokens", "question_tokens", "new_tokens", "compress_s", "prefill_s",
                   "decode_tok_s")


def row_key(args: argparse.Namespace, data: str, method: str, rate: float, ex: QAExample) -> dict[str, Any]:
    """Everything a row depends on besides the code: data subset, example, method, budget, decoding, weights."""
    parts = method.split("+")
    soft = [p for p in parts if p in soft_methods()]
    return {"row": method, "rate": rate, "data": data, "id": ex.id, "question": ex.question, "documents": ex.documents,
            "max_new_tokens": args.max_new_tokens, "soft_task": args.soft_task if soft else None,
            "pipeline_hard_rate": args.pipeline_hard_rate if "+" in method else None,
            "weights": {p: weights_source(getattr(args, p, None)) for p in soft},
            "classifier": classifier_source() if "llmlingua2" in parts else None}


def examples_of(args: argparse.Namespace, data: str, path: Path, reader: Reader) -> list[QAExample]:
    """The subset of a data file a run reads (sized for a CPU budget)."""
    examples = load_qa_file(path, limit=args.n)
    if data == "longdoc":  # whole Wikipedia articles (2k-20k tokens): cut to the first max_doc_tokens for CPU
        for ex in examples:
            ids = reader.encode(ex.documents[0])[: args.max_doc_tokens]
            ex.documents = [reader.tokenizer.decode(ids)]
    elif args.max_docs and data == "multidoc":  # the gold paragraph and the first distractors, in order
        for ex in examples:
            keep = sorted({ex.gold_index} | set([i for i in range(len(ex.documents)) if i != ex.gold_index][: args.max_docs - 1]))
            ex.documents = [ex.documents[i] for i in keep]
    return examples


def build_systems(args: argparse.Namespace, reader: Reader, compressors: Compressors) -> list[Any]:
    """One harness system per ``--methods`` name (a bad name fails here, before any example runs)."""
    return [build_system(m, reader, through_cache=True, soft_task=args.soft_task, hard_rate=args.pipeline_hard_rate,
                         make=compressors) for m in args.methods]


def run(args: argparse.Namespace, reader: Reader, save: Any = None, *, data_files: dict[str, Path] | None = None,
        preloaded: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every method of ``args`` on every data subset; ``save(rows, notes)`` after each (method, budget)."""
    cache = CompressionCache(args.cache)
    row_cache = CompressionCache(Path(args.cache) / "rows" if args.cache else None)
    systems = build_systems(args, reader, Compressors(args, cache, preloaded))
    per_entry = kv_bytes_per_entry(reader.model)
    rows = []
    for data in args.data:
        examples = examples_of(args, data, (data_files or DATA)[data], reader)
        for method, system in zip(args.methods, systems):
            rates = [1.0] if method == "full" else args.rates
            for rate in rates:
                t_method, hits, reused = time.perf_counter(), cache.hits, row_cache.hits
                for ex in examples:
                    if args.compress_only:
                        system.compress(ex, rate)
                        continue
                    compute = lambda: answer(system, ex, rate, data, per_entry, cache)  # noqa: E731
                    rows.append(row_cache.get(row_key(args, data, method, rate, ex), compute) if args.reuse_rows
                                else compute())
                print(f"{data} {method} @ {rate}: {time.perf_counter() - t_method:.0f}s "
                      f"({cache.hits - hits} cached compressions, {row_cache.hits - reused} reused rows)", flush=True)
                if save is not None:
                    save(rows, method_notes(args, args.methods))  # a run cut short by its time limit keeps what it finished
    return rows, method_notes(args, args.methods)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["method"], row["rate"]), []).append(row)
    table = []
    for (data, method, rate), group in groups.items():
        mean = lambda k: float(np.mean([g[k] for g in group]))  # noqa: E731
        table.append({"data": data, "method": method, "family": group[0]["family"], "budget": rate, "n": len(group),
                      "kv_fraction": mean("kv_fraction"), "kv_mib": mean("kv_mib"), "peak_kv_mib": mean("peak_kv_mib"),
                      "em": mean("em"), "f1": mean("f1"), "contains": mean("contains"),
                      "compress_s": mean("compress_s"), "prefill_s": mean("prefill_s"),
                      "decode_tok_s": mean("decode_tok_s")})
    order = {"none": 0, "hard": 1, "pipeline": 2, "soft": 3, "attention": 4}
    return sorted(table, key=lambda t: (t["data"], order.get(t["family"], 9), t["method"], -t["budget"]))


def plot(table: list[dict[str, Any]], path: Path, machine: str) -> None:
    """Answer F1 against the KV cache the answer is decoded from: one panel per dataset, one line per method
    (colour per method, marker and line style per family), one shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({t["data"] for t in table})
    methods = list(dict.fromkeys(t["method"] for t in table))
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    styles = {"hard": ("-", "o"), "attention": ("--", "^"), "soft": (":", "s"), "pipeline": ("-.", "D"), "none": ("", "*")}
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.6), squeeze=False)
    handles = {}
    for ax, data in zip(axes[0], datasets):
        rows = [t for t in table if t["data"] == data]
        for method in dict.fromkeys(t["method"] for t in rows):
            pts = sorted((t["kv_mib"], t["f1"]) for t in rows if t["method"] == method)
            family = next(t["family"] for t in rows if t["method"] == method)
            line, marker = styles.get(family, ("-", "o"))
            (h,) = ax.plot(*zip(*pts), marker=marker, markersize=13 if family == "none" else 5, linestyle=line,
                           color="black" if family == "none" else colours[method], label=f"{method} ({family})")
            handles.setdefault(h.get_label(), h)
        n = max(t["n"] for t in rows)
        ax.set_xlabel("KV cache at decode start (MiB)")
        ax.set_ylabel("answer F1")
        ax.set_title(f"{data} (n={n})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle(f"Answer quality vs KV memory at 50/25/10% budgets, SmolLM2-135M-Instruct reader\n{machine}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * math.ceil(len(handles) / 5), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def notes_markdown(meta: dict[str, Any]) -> str:
    """What the table says beside the machine and command: decoding, subsets, when rows were computed, the methods."""
    lines = [f"Answers up to {meta['max_new_tokens']} tokens, greedy, one question at a time. Subsets (CPU budget): "
             + "; ".join(f"{d}: {', '.join(f'{k}={v}' for k, v in cfg.items())}" for d, cfg in
                         sorted(meta.get("datasets", {}).items()))
             + " (multidoc: the gold paragraph and the first distractors; longdoc: each article's first tokens). "
             "Columns: budget r; kv_fraction, kv_mib: the KV cache the answer is decoded from, as a fraction of the "
             "uncompressed context's and in MiB; peak_kv_mib at the end of decoding.", ""]
    if meta.get("computed_utc"):
        first, last = meta["computed_utc"]
        lines += [f"Rows computed between {first} and {last} UTC (a row or compression is reused across runs when "
                  "nothing it depends on changed: `--reuse-rows`, `--cache`); 'compress_s' is the time measured when "
                  "the compression was first computed, 'prefill_s' and 'decode_tok_s' when the row was. The machine "
                  "was shared with other jobs: compare times within a column, roughly.", ""]
    lines += [f"- {name}: {note}" for name, note in sorted(meta.get("notes", {}).items())]
    if meta.get("commands"):
        lines += ["", "Commands whose rows the table holds: " + "; ".join(f"`{c}`" for c in meta["commands"])]
    return "\n".join(lines)


def load_previous(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-example rows and meta of an earlier run's JSON (``examples``; files written before the script used
    ``write_results`` kept them under ``rows`` beside ``table``)."""
    if not path.is_file():
        return [], {}
    data = json.loads(path.read_text())
    rows = data["examples"] if "examples" in data else data.get("rows", []) if "table" in data else []
    return rows, data.get("meta", {})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["multidoc", "longdoc"], choices=sorted(DATA))
    p.add_argument("--methods", nargs="+", default=["full", "random", "selective_context", "knorm", "snapkv",
                                                     "streaming_llm", "sliding_window"])
    p.add_argument("--rates", nargs="+", type=float, default=[0.5, 0.25, 0.1])
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--max-doc-tokens", type=int, default=1024)
    p.add_argument("--max-docs", type=int, default=0, help="multidoc: keep the gold + (k-1) distractors (0: all 10)")
    p.add_argument("--gist", default="runs/gist-cpu/final", help="saved gist compressor (absent: untrained)")
    p.add_argument("--autocompressor", default="runs/autocompressor-cpu/final")
    p.add_argument("--icae", default="runs/soft/icae", help="saved icae compressor folder (absent: untrained)")
    p.add_argument("--kv", default="runs/soft/kv", help="saved kv (500xCompressor) folder (absent: untrained)")
    p.add_argument("--soft-task", default="qa", choices=["qa", "lm", "ae"],
                   help="icae / kv: the task marker read after the soft prompt (qa: [FT] and the QA template)")
    p.add_argument("--pipeline-hard-rate", type=float, default=0.5, help="HARD+SOFT pipelines: the hard stage's rate")
    p.add_argument("--cache", default="runs/equal_budget_cache", help="compressions reused across runs ('' = none)")
    p.add_argument("--compress-only", action="store_true",
                   help="only compute and cache the compressions (no reader, nothing written but the cache)")
    p.add_argument("--reuse-rows", action="store_true",
                   help="reuse rows computed by earlier runs with the same data, method, budget, decoding and weights "
                        "(kept in --cache/rows); only new or changed rows are computed")
    p.add_argument("--fresh", action="store_true", help="the table holds this run's rows only (no earlier rows)")
    p.add_argument("--out", default=str(RESULTS / "equal_budget"))
    p.add_argument("--threads", type=int, default=1)  # 2 threads on a shared 2-core box are ~5x slower
    return p


def main(argv: list[str] | None = None, reader: Reader | None = None, **run_options: Any) -> int:
    """The command line; ``reader`` (default SmolLM2-135M-Instruct on CPU) and ``run_options`` (see :func:`run`)
    let tests run it on a tiny model."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    previous_rows, previous_meta = ([], {}) if args.fresh else load_previous(out.with_suffix(".json"))
    reader = reader or Reader(ReaderConfig(model="smollm2-135m", device="cpu", dtype="float32",
                                           max_new_tokens=args.max_new_tokens))
    t0 = time.perf_counter()

    def save(rows: list[dict[str, Any]], notes: dict[str, str]) -> tuple[list[dict[str, Any]], set]:
        done = {(r["data"], r["method"], r["rate"]) for r in rows}
        all_rows = [r for r in previous_rows if (r["data"], r["method"], r["rate"]) not in done] + rows
        settings = {d: ({"n": args.n, "max_docs": args.max_docs or 10} if d == "multidoc" else
                        {"n": args.n, "max_doc_tokens": args.max_doc_tokens}) for d in args.data}
        stamps = sorted(r["computed_utc"] for r in all_rows if r.get("computed_utc"))
        meta = {"max_new_tokens": args.max_new_tokens, "computed_utc": [stamps[0], stamps[-1]] if stamps else None,
                "datasets": {**previous_meta.get("datasets", {}), **settings},
                "notes": {**previous_meta.get("notes", {}), **notes},
                "commands": sorted(set(previous_meta.get("commands", [])) | {" ".join(sys.argv[1:] if argv is None else argv)})}
        table = aggregate(all_rows)
        write_results(out, TITLE, table, columns=COLUMNS, notes=notes_markdown(meta),
                      extra={"meta": meta, "examples": all_rows})
        plot(table, out.with_suffix(".png"), machine_line())
        return table, {(d, m) for d, m, _ in done}

    try:
        with torch.no_grad():
            rows, notes = run(args, reader, None if args.compress_only else save, **run_options)
    except MMCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.compress_only:
        print(f"{time.perf_counter() - t0:.0f}s; compressions cached in {args.cache}")
        return 0
    table, done = save(rows, notes)
    print(markdown_table([t for t in table if (t["data"], t["method"]) in done], COLUMNS))
    print(f"{time.perf_counter() - t0:.0f}s; wrote {out.with_suffix('.json')}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
