"""xRAG on SQuAD: reader accuracy with one projected token per context, against no context and the full context.

The reader is the frozen LLM of the trained compressor (SmolLM2-135M-Instruct by default), with the same chat
prompt in every condition (xRAG's "Refer to the background document: ..." layout, then the question and a
short-answer instruction); only the background differs: nothing, the context text, or the context's soft token(s).
Rows are the held-out articles of the training split (``qa_split``), so no evaluated context was trained on.

    PYTHONPATH=. python benchmarks/xrag_squad.py --compressor runs/xrag-squad/final \
        --compressor stage1=runs/xrag-paraphrase/final --limit 200

Writes ``benchmarks/results/xrag_squad.json`` and ``.md`` (EM, F1, contains-answer, context tokens, seconds).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from mmcompress import create_compressor
from mmcompress.evaluation.metrics import contains_answer, exact_match, f1_score
from mmcompress.soft.xrag import pad_rows, rag_user_message
from mmcompress.soft.xrag_task import qa_split
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def text_answers(xrag, users: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """The reader's answers to plain-text user turns (the same chat template, batched, greedy)."""
    module, out = xrag.module, []
    for i in range(0, len(users), batch_size):
        rows = [module.prompt_ids(u, [], xrag.config.system) for u in users[i : i + batch_size]]
        batch = pad_rows(rows, xrag.tokenizer.pad_token_id, side="left")
        embeds = module.splice(batch["input_ids"], batch["slot_mask"], torch.zeros(0, 1))
        with torch.no_grad():
            ids = xrag.llm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(xrag.device),
                                    max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                    top_k=None, pad_token_id=xrag.tokenizer.pad_token_id)
        out += [t.strip() for t in xrag.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


def xrag_answers(xrag, rows: list[dict], batch_size: int, max_new_tokens: int) -> tuple[list[str], list[int]]:
    answers, soft_tokens = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        soft = xrag.compress_batch([[r["context"]] for r in chunk])
        soft_tokens += soft.soft_tokens
        answers += xrag.generate(soft, [r["question"] for r in chunk], max_new_tokens=max_new_tokens)
    return answers, soft_tokens


def score(predictions: list[str], rows: list[dict]) -> dict[str, float]:
    golds = [r["answers"] for r in rows]
    n = len(rows)
    return {"exact_match": sum(exact_match(p, g) for p, g in zip(predictions, golds)) / n,
            "f1": sum(f1_score(p, g) for p, g in zip(predictions, golds)) / n,
            "contains_answer": sum(contains_answer(p, g) for p, g in zip(predictions, golds)) / n}


def training_info(path: Path) -> dict:
    """The run that produced a saved compressor: its recipe and last logged losses (when saved by ``train``)."""
    run = path.parent
    info: dict = {"path": str(path)}
    if (run / "recipe.yaml").exists():
        import yaml

        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        info["recipe"] = {k: recipe.get(k) for k in ("model", "data", "objective", "train")}
    if (run / "log.jsonl").exists():
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        train = [r for r in log if "loss" in r]
        evals = [r for r in log if any(k.startswith("eval/") for k in r)]
        info["steps"] = train[-1]["step"] if train else 0
        info["first_loss"], info["last_loss"] = (train[0]["loss"], train[-1]["loss"]) if train else (None, None)
        info["last_eval"] = evals[-1] if evals else None
    return info



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compressor", action="append", required=True,
                        help="a saved xrag folder, optionally LABEL=PATH; the first one's LLM is the reader")
    parser.add_argument("--data", default="../shared/data/squad_dev.jsonl")
    parser.add_argument("--eval-rows", type=int, default=200, help="held-out size of the training split")
    parser.add_argument("--seed", type=int, default=0, help="split seed (as in the recipe)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out rows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-chunks", type=int, default=1,
                        help="soft tokens per context = num_slots x chunks; 1 chunk: one token per context")
    parser.add_argument("--out", default="benchmarks/results/xrag_squad")
    args = parser.parse_args(argv)

    _, rows = qa_split(args.data, args.eval_rows, args.seed)
    rows = rows[: args.limit] if args.limit else rows
    specs = [c.split("=", 1) if "=" in c else [f"xrag ({Path(c).parent.name})", c] for c in args.compressor]
    compressors = [(label, Path(path), create_compressor(path, max_chunks=args.max_chunks))
                   for label, path in specs]
    reader = compressors[0][2]
    print(f"{len(rows)} held-out rows; reader {reader.config.model} ({reader.config.dtype}) on {reader.device}",
          flush=True)

    results = []
    machine = machine_line()
    report = {"benchmark": "xrag_squad", "command": "PYTHONPATH=. python " + shlex.join(sys.argv), "machine": machine,
              "reader": reader.config.model, "reader_dtype": reader.config.dtype, "rows": len(rows),
              "split": {"data": args.data, "eval_rows": args.eval_rows, "seed": args.seed}, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every condition, so a run cut short keeps what it measured
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    def record(name: str, predictions: list[str], context_tokens: list[int], seconds: float, **extra) -> None:
        metrics = score(predictions, rows)
        results.append({"condition": name, **{k: round(v, 4) for k, v in metrics.items()},
                        "context_tokens_mean": round(sum(context_tokens) / len(context_tokens), 2),
                        "seconds": round(seconds, 1), **extra, "examples": [
                            {"question": r["question"], "gold": r["answers"][0], "prediction": p}
                            for r, p in list(zip(rows, predictions))[:5]]})
        write()
        print(f"{name:34s} EM {metrics['exact_match']:.3f}  F1 {metrics['f1']:.3f}  "
              f"contains {metrics['contains_answer']:.3f}  ({seconds:.0f} s)", flush=True)

    def run_xrag(label: str, path: Path, xrag) -> None:
        t0 = time.perf_counter()
        preds, soft_tokens = xrag_answers(xrag, rows, args.batch_size, args.max_new_tokens)
        record(label, preds, soft_tokens, time.perf_counter() - t0, training=training_info(path))

    # the first compressor and both baselines first, so that a run cut short still has the main comparison
    t0 = time.perf_counter()
    instruction = reader.config.answer_instruction  # the same prompt as the xrag conditions, minus the soft token
    preds = text_answers(reader, [rag_user_message(r["question"], None, instruction) for r in rows], args.batch_size,
                         args.max_new_tokens)
    record("no context", preds, [0] * len(rows), time.perf_counter() - t0)
    run_xrag(*compressors[0])
    t0 = time.perf_counter()
    preds = text_answers(reader, [rag_user_message(r["question"], r["context"], instruction) for r in rows],
                         args.batch_size,
                         args.max_new_tokens)
    record("full context", preds, reader.count_tokens([r["context"] for r in rows]), time.perf_counter() - t0)
    for spec in compressors[1:]:
        run_xrag(*spec)

    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def markdown(report: dict) -> str:
    title = f"# xRAG on SQuAD ({report['rows']} held-out rows, reader {report['reader']}, {report['reader_dtype']})"
    lines = [title, "",
             f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", "",
             "| condition | context tokens | EM | F1 | contains answer | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['condition']} | {r['context_tokens_mean']} | {r['exact_match']:.3f} | {r['f1']:.3f} | "
                     f"{r['contains_answer']:.3f} | {r['seconds']} |")
    for r in report["results"]:
        if "training" in r:
            t = r["training"]
            train = (t.get("recipe") or {}).get("train") or {}
            lines += ["", f"**{r['condition']}**: {t['path']}, {t.get('steps')} steps at batch "
                      f"{train.get('batch_size')} "
                      f"(lr {train.get('lr')}), train loss {t.get('first_loss')} -> {t.get('last_loss')}, "
                      f"last held-out eval {t.get('last_eval')}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
