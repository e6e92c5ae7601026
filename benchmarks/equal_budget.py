"""Prompt compression against attention-side methods at the same budget.

Every method answers the same questions with SmolLM2-135M-Instruct as reader, through one decoding path
(:func:`mmcompress.kvcache.generate_from_cache`): the method prepares a KV cache standing in for the context
(chat-template prefix, instruction, documents), the question and the chat-template suffix are read after it, and
the answer is decoded greedily. At budget ``r``:

- hard methods keep ``r`` of the documents' tokens (instruction and question untouched) and the reader prefills
  what is left;
- KV presses prefill the whole context and keep ``r`` of its KV entries per layer;
- soft methods compress the documents at ratio ``1/r`` (``chunk_tokens = num_slots / r``);
- the pipeline applies a hard method and then a press, each at ``sqrt(r)``.

Measured per example: answer EM / F1 / contains-answer, the KV cache the answer is decoded from (entries and MiB at
decode start, peak MiB at the end of decoding: on CPU the cache is the memory a method changes; process RSS is
dominated by the weights), time to compress, time to prefill, decode tokens per second.

Runs append to ``benchmarks/results/equal_budget.json`` (rows of one (data, method) are replaced), so the table
can be built by several short runs; the Markdown table and the PNG plot are rebuilt from all rows each time.

    PYTHONPATH=. python benchmarks/equal_budget.py --data multidoc --methods full random selective_context \
        knorm snapkv streaming_llm sliding_window --n 12
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION, QAExample, load_qa_file  # noqa: E402
from mmcompress.evaluation.metrics import contains_answer, exact_match, f1_score  # noqa: E402
from mmcompress.kvcache import CachedContext, create_press, generate_from_cache, list_presses, prefill  # noqa: E402

SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()), ROOT.parent / "shared")) / "data"
DATA = {"multidoc": SHARED / "multidoc_qa_dev.jsonl", "longdoc": SHARED / "longdoc_qa.jsonl"}
RESULTS = ROOT / "benchmarks" / "results"
HARD = ("random", "selective_context", "llmlingua", "longllmlingua", "llmlingua2")
FAMILY = {**{m: "hard" for m in HARD}, **{p: "attention" for p in ("knorm", "snapkv", "streaming_llm", "sliding_window")},
          "gist": "soft", "autocompressor": "soft", "full": "none", "selective_context+snapkv": "pipeline"}


def machine() -> str:
    return f"2-core CPU, no GPU ({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s))"


# ------------------------------------------------------------------------------------------------ the reader
class Reader:
    """SmolLM2-135M-Instruct with its chat template, and the split of a QA prompt into context / question ids."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                             add_generation_prompt=True)
        self.prefix, self.suffix = text.split("\x00")
        self.stop = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if t is not None]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def head_text(self, documents: list[str]) -> str:
        return self.prefix + "\n\n".join([DEFAULT_INSTRUCTION, *documents])

    def question_ids(self, ex: QAExample) -> list[int]:
        return self.encode("\n\n" + ex.question + self.suffix)


def kv_bytes_per_entry(model: Any) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * next(model.parameters()).element_size())


# ------------------------------------------------------------------------------------------------ the systems
class Systems:
    """``prepare(method, example, rate) -> (model, CachedContext, compress_seconds, prefill_seconds, extras)``."""

    def __init__(self, reader: Reader, args: argparse.Namespace):
        self.reader, self.args = reader, args
        self._hard: dict[str, Any] = {}
        self._soft: dict[str, Any] = {}
        self.notes: dict[str, str] = {}

    def hard(self, name: str):
        if name not in self._hard:
            from mmcompress import create_compressor

            self._hard[name] = create_compressor(name)
        return self._hard[name]

    def soft(self, name: str):
        if name not in self._soft:
            path = getattr(self.args, name)
            if path and Path(path, "trainable.safetensors").is_file() and Path(path).parent.joinpath("recipe.yaml").is_file() \
                    and not Path(path, "mmcompress_config.json").is_file():  # a trainer checkpoint of a recipe run
                import yaml
                from safetensors.torch import load_file

                from mmcompress.registry import get_compressor_class

                recipe = yaml.safe_load(Path(path).parent.joinpath("recipe.yaml").read_text())
                cls = get_compressor_class(name)
                compressor = cls(cls.config_class.from_dict(recipe["model"]))
                compressor.load_trainable(load_file(str(Path(path, "trainable.safetensors"))), source=str(path))
                self.notes[name] = f"checkpoint {Path(path).name} of a CPU run of configs/train/{name}.yaml ({path})"
            elif path and Path(path, "mmcompress_config.json").is_file():
                from mmcompress.factory import create_compressor

                compressor = create_compressor(str(path))
                log = Path(path).parent / "log.jsonl"
                steps = [json.loads(line).get("step") for line in log.read_text().splitlines()] if log.is_file() else []
                self.notes[name] = f"trained {max([s for s in steps if s] or [0])} steps on CPU ({path})"
            else:
                from mmcompress.soft.autocompressor import AutoCompressor
                from mmcompress.soft.gist import GistCompressor

                compressor = {"gist": GistCompressor, "autocompressor": AutoCompressor}[name]()
                self.notes[name] = "UNTRAINED (no checkpoint given): a floor, not the method's quality"
            self._soft[name] = compressor
        return self._soft[name]

    def prepare(self, method: str, ex: QAExample, rate: float):
        r = self.reader
        device = next(r.model.parameters()).device
        if method == "full":
            ids = r.encode(r.head_text(ex.documents))
            t0 = time.perf_counter()
            context = prefill(r.model, torch.tensor([ids], device=device))
            return r.model, context, 0.0, time.perf_counter() - t0, {}
        if method in HARD or method == "selective_context+snapkv":
            hard_name, press = (method, None) if method in HARD else ("selective_context", "snapkv")
            hard_rate = rate if press is None else math.sqrt(rate)
            from mmcompress.prompt import Prompt

            prompt = Prompt.from_documents(ex.documents, instruction=DEFAULT_INSTRUCTION, question=ex.question)
            result = self.hard(hard_name).compress(prompt, rate=hard_rate)
            docs = [s.text for s in result.prompt.text_segments if s.role.value in ("context", "text") and s.text]
            ids = r.encode(r.head_text(docs))
            t0 = time.perf_counter()
            kv_press = None if press is None else create_press(press, rate=math.sqrt(rate))
            context = prefill(r.model, torch.tensor([ids], device=device), kv_press)
            return r.model, context, float(result.timings.get("total", 0.0)), time.perf_counter() - t0, {}
        if method in list_presses():
            ids = r.encode(r.head_text(ex.documents))
            t0 = time.perf_counter()
            context = prefill(r.model, torch.tensor([ids], device=device), create_press(method, rate=rate))
            return r.model, context, 0.0, time.perf_counter() - t0, {}
        if method in ("gist", "autocompressor"):
            return self.prepare_soft(method, ex, rate)
        raise SystemExit(f"unknown method {method!r}")

    def prepare_soft(self, method: str, ex: QAExample, rate: float):
        r = self.reader
        compressor = self.soft(method)
        compressor.config.chunk_tokens = max(1, round(compressor.config.num_slots / rate))
        docs_text = "\n\n".join(ex.documents)
        head = r.prefix + DEFAULT_INSTRUCTION
        t0 = time.perf_counter()
        soft = compressor.encode_spans([docs_text])[0]
        compress_s = time.perf_counter() - t0
        from mmcompress.prompt import Role, TextSegment

        t0 = time.perf_counter()
        if method == "gist":
            from mmcompress.soft.gist import stack_row_caches

            layers, position, _ = compressor._row_cache([TextSegment(head, Role.INSTRUCTION), soft])
            context = stack_row_caches(compressor.decoder, [(layers, position)])
            model = compressor.decoder
        else:
            model = compressor.module.llm
            embed = model.get_input_embeddings()
            head_ids = torch.tensor(r.encode(head + "\n\n"), device=compressor.device)
            embeds = torch.cat([embed(head_ids), soft.embeddings.to(embed.weight.dtype)])[None]
            with torch.no_grad():
                context = prefill(model, inputs_embeds=embeds)
        return model, context, compress_s, time.perf_counter() - t0, {"soft_tokens": soft.num_tokens}


# ------------------------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace, save: Any = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from mmcompress.models import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    reader = Reader(lm.model, lm.tokenizer)
    per_entry = kv_bytes_per_entry(lm.model)
    systems = Systems(reader, args)
    rows = []
    for data in args.data:
        examples = load_qa_file(DATA[data], limit=args.n)
        if data == "longdoc":  # whole Wikipedia articles (2k-20k tokens): cut to the first max_doc_tokens for CPU
            for ex in examples:
                ids = reader.encode(ex.documents[0])[: args.max_doc_tokens]
                ex.documents = [reader.tokenizer.decode(ids)]
        elif args.max_docs and data == "multidoc":  # the gold paragraph and the first distractors, in order
            for ex in examples:
                keep = sorted({ex.gold_index} | set([i for i in range(len(ex.documents)) if i != ex.gold_index][: args.max_docs - 1]))
                ex.documents = [ex.documents[i] for i in keep]
        for method in args.methods:
            rates = [1.0] if method == "full" else args.rates
            for rate in rates:
                t_method = time.perf_counter()
                for ex in examples:
                    model, context, compress_s, prefill_s, extras = systems.prepare(method, ex, rate)
                    entries = context.cache_entries  # before the question and answer are appended
                    question = reader.question_ids(ex)
                    generation = generate_from_cache(model, context, [question], max_new_tokens=args.max_new_tokens,
                                                     eos_token_id=reader.stop, restore=False)
                    answer = reader.tokenizer.decode(generation.token_ids[0], skip_special_tokens=True).strip()
                    full_entries = len(reader.encode(reader.head_text(ex.documents)))
                    rows.append({
                        "data": data, "method": method, "family": FAMILY.get(method, "?"), "rate": rate, "id": ex.id,
                        "context_tokens": full_entries, "kv_entries": entries, "kv_fraction": entries / full_entries,
                        "kv_mib": entries * per_entry / 2**20,
                        "peak_kv_mib": (entries + len(question) + generation.new_tokens) * per_entry / 2**20,
                        "compress_s": compress_s, "prefill_s": prefill_s + generation.prefill_seconds,
                        "decode_tok_s": generation.decode_tokens_per_second, "answer": answer,
                        "em": exact_match(answer, ex.answers), "f1": f1_score(answer, ex.answers),
                        "contains": contains_answer(answer, ex.answers), **extras})
                print(f"{data} {method} @ {rate}: {time.perf_counter() - t_method:.0f}s", flush=True)
                if save is not None:
                    save(rows, systems.notes)  # a run cut short by its time limit keeps what it finished
    return rows, systems.notes


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


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Equal-budget QA benchmark, reader SmolLM2-135M-Instruct, machine: {meta['machine']}.", "",
             f"Answers up to {meta['max_new_tokens']} tokens, greedy, one question at a time. Subsets (CPU budget): "
             + "; ".join(f"{d}: {', '.join(f'{k}={v}' for k, v in cfg.items())}" for d, cfg in
                         sorted(meta.get("datasets", {}).items()))
             + " (multidoc: the gold paragraph and the first distractors; longdoc: each article's first tokens).", ""]
    for name, note in sorted(meta.get("notes", {}).items()):
        lines.append(f"- {name}: {note}")
    lines += ["", "| data | n | method | family | budget | KV kept | KV MiB | peak KV MiB | EM | F1 | contains | "
              "compress s | prefill s | decode tok/s |", "|" + " --- |" * 14]
    for t in table:
        lines.append(f"| {t['data']} | {t['n']} | {t['method']} | {t['family']} | {t['budget']:.2f} | {t['kv_fraction']:.3f} | "
                     f"{t['kv_mib']:.2f} | {t['peak_kv_mib']:.2f} | {t['em']:.3f} | {t['f1']:.3f} | "
                     f"{t['contains']:.3f} | {t['compress_s']:.3f} | {t['prefill_s']:.3f} | {t['decode_tok_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({t["data"] for t in table})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    styles = {"hard": "-", "attention": "--", "soft": ":", "pipeline": "-.", "none": ""}
    for ax, data in zip(axes[0], datasets):
        rows = [t for t in table if t["data"] == data]
        for method in dict.fromkeys(t["method"] for t in rows):
            pts = sorted((t["kv_mib"], t["f1"]) for t in rows if t["method"] == method)
            family = next(t["family"] for t in rows if t["method"] == method)
            ax.plot(*zip(*pts), marker="*" if family == "none" else "o", markersize=12 if family == "none" else 5,
                    linestyle=styles.get(family, "-"), label=f"{method} ({family})")
        ax.set_xlabel("KV cache at decode start (MiB)")
        ax.set_ylabel("answer F1")
        ax.set_title(data)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Answer quality vs KV memory at 50/25/10% budgets, SmolLM2-135M-Instruct reader\n{machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
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
    p.add_argument("--out", default=str(RESULTS / "equal_budget"))
    p.add_argument("--threads", type=int, default=1)  # 2 threads on a shared 2-core box are ~5x slower
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": [], "meta": {"notes": {}}}
    t0 = time.perf_counter()

    def save(rows: list[dict[str, Any]], notes: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any], set]:
        done = {(r["data"], r["method"], r["rate"]) for r in rows}
        all_rows = [r for r in previous["rows"] if (r["data"], r["method"], r["rate"]) not in done] + rows
        settings = {d: ({"n": args.n, "max_docs": args.max_docs or 10} if d == "multidoc" else
                        {"n": args.n, "max_doc_tokens": args.max_doc_tokens}) for d in args.data}
        meta = {"machine": machine(), "max_new_tokens": args.max_new_tokens,
                "datasets": {**previous["meta"].get("datasets", {}), **settings},
                "notes": {**previous["meta"].get("notes", {}), **notes},
                "commands": sorted(set(previous["meta"].get("commands", [])) | {" ".join(sys.argv[1:])})}
        table = aggregate(all_rows)
        json_path.write_text(json.dumps({"meta": meta, "table": table, "rows": all_rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(table, meta))
        plot(table, out.with_suffix(".png"), machine())
        return table, meta, {(d, m) for d, m, _ in done}

    with torch.no_grad():
        rows, notes = run(args, save)
    table, meta, done = save(rows, notes)
    print(markdown([t for t in table if (t["data"], t["method"]) in done], meta))
    print(f"{time.perf_counter() - t0:.0f}s; wrote {json_path}, .md, .png")


if __name__ == "__main__":
    main()
