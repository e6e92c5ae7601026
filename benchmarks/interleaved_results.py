"""Answer accuracy of interleaved image-text prompts under four treatments, with the total compression ratio of each.

(a) uncompressed: SmolLM2-135M reads every adapter token (16 per image) and all the text (the ``full``-mode model);
(b) hard: fewer visual tokens (each image's adapter tokens average-pooled 16 -> 4, M3 style) and the compressible
    text compressed by Selective Context at rate 0.5, read by the same full-mode model;
(c) shared soft tokens: the whole compressible part -> K = 4, 8, 16 soft tokens (one nested-slot model);
(d) hard-then-soft: the hard step of (b) (text at rate 0.5, images pooled 16 -> 8), then K = 4 soft tokens.

(c) and (d) run again for a question-aware soft model (``--soft-question``, ``--part question``): its encoder reads
the question too, so its soft tokens hold what that question needs (same ratio: the question is kept as text anyway).

The ratio counts LLM input positions: original = text tokens + adapter tokens of the whole prompt (question included);
compressed = what the decoder reads instead (kept question + soft tokens, or the shorter prompt). Models are trained
first with ``mmcompress train`` (commands in the README); this script evaluates the saved folders:

    PYTHONPATH=. python benchmarks/interleaved_results.py --full runs/interleaved-shapes-full/final \\
        --soft runs/interleaved-shapes-soft/final --examples 48 --part all

``--part full|soft|question`` evaluates one model and stores its rows in the JSON (so each run stays short); ``report``
rewrites the Markdown table from the JSON; ``--name`` picks the file stem (default ``interleaved``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmcompress.multimodal.tasks import answer_correct, build_examples
from mmcompress.prompt import Prompt, TextSegment
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

OUT = Path(__file__).resolve().parent / "results"
QUESTION_LABEL = "question-aware "


def hard_text(prompts: list[Prompt], rate: float) -> list[Prompt]:
    """Selective Context (the foundation's hard method) on the compressible text segments; images untouched."""
    from mmcompress import create_compressor

    sc = create_compressor("selective_context", rate=rate, unit="token")
    out = []
    for p in prompts:
        result = sc.compress(p)
        out.append(result.prompt)
    return out


def answer_batches(comp, prompts, batch_size: int):
    """Compress and answer ``prompts`` a batch at a time: yields ``(soft prompt, answers)`` per batch."""
    for start in range(0, len(prompts), batch_size):
        soft = comp.compress_batch(prompts[start : start + batch_size])
        yield soft, [a.strip() for a in comp.generate(soft, max_new_tokens=4)]


def evaluate(comp, prompts, examples, batch_size: int) -> dict:
    t0 = time.perf_counter()
    answers, origin, compressed, soft_tokens = [], [], [], []
    for soft, batch_answers in answer_batches(comp, prompts, batch_size):
        answers += batch_answers
        compressed += soft.compressed_tokens
        origin += soft.origin_tokens
        soft_tokens += soft.soft_tokens
    correct = [answer_correct(a, e.answer) for a, e in zip(answers, examples)]
    by_kind = {kind: float(np.mean([c for c, e in zip(correct, examples) if e.kind == kind]))
               for kind in sorted({e.kind for e in examples})}
    return {"accuracy": float(np.mean(correct)), "by_kind": by_kind, "decoder_tokens": float(np.mean(compressed)),
            "stage_origin_tokens": float(np.mean(origin)), "soft_tokens": float(np.mean(soft_tokens)),
            "seconds": round(time.perf_counter() - t0, 1), "samples": [
                {"question": e.question, "answer": e.answer, "prediction": a} for a, e in list(zip(answers, examples))[:4]]}


def original_tokens(comp, prompts) -> list[int]:
    """Positions of the uncompressed prompt: text tokens + adapter tokens of every image, question included (counted
    from the embedding plan, without running a model)."""
    out = []
    for p in prompts:
        prompt, layout = comp.layout(p)
        kept = [s.text for s in layout.prefix + layout.suffix if isinstance(s, TextSegment)]
        out.append(len(comp.plan_compressed(layout, prompt.separator)) + sum(comp.count_tokens(kept)))
    return out


def run_full(path: str, examples, prompts, hard_prompts, batch_size: int) -> list[dict]:
    from mmcompress import create_compressor

    comp = create_compressor(path, device="cpu")
    comp.module.eval()
    origin = np.mean(original_tokens(comp, prompts))
    rows = []
    r = evaluate(comp, prompts, examples, batch_size)
    rows.append({"method": "(a) uncompressed (all adapter tokens + text)", **r, "original_tokens": origin})
    comp_hard = create_compressor(path, device="cpu", reduce_image_tokens=4)
    comp_hard.module.eval()
    r = evaluate(comp_hard, hard_prompts, examples, batch_size)
    rows.append({"method": "(b) hard: images 16->4 tokens, text Selective Context 0.5", **r, "original_tokens": origin})
    return rows


def run_soft(path: str, examples, prompts, hard_prompts, batch_size: int, label: str = "") -> list[dict]:
    """Rows (c) and (d) for one soft model; ``label`` ("question-aware ") names a variant in the method column."""
    from mmcompress import create_compressor

    comp = create_compressor(path, device="cpu")
    comp.module.eval()
    origin = np.mean(original_tokens(comp, prompts))  # same text + adapter positions as the full model
    rows = []
    for k in (4, 8, 16):
        comp.set_slots(k)
        r = evaluate(comp, prompts, examples, batch_size)
        rows.append({"method": f"(c) {label}shared soft tokens K={k}", **r, "original_tokens": origin})
    hard = create_compressor(path, device="cpu", reduce_image_tokens=8)
    hard.module.eval()
    hard.set_slots(4)
    r = evaluate(hard, hard_prompts, examples, batch_size)
    rows.append({"method": f"(d) hard (images 16->8, text 0.5) then {label}soft K=4", **r,
                 "original_tokens": origin})
    return rows


def _order(row: dict) -> tuple:
    import re

    k = re.search(r"K=(\d+)", row["method"])
    return row["method"][:3], QUESTION_LABEL in row["method"], int(k.group(1)) if k else 0


def write_report(data: dict, name: str = "interleaved") -> None:
    rows = sorted(data["rows"], key=_order)
    ref = next((r["accuracy"] for r in rows if r["method"].startswith("(a)")), None)
    lines = [
        "# Interleaved image-text prompts: accuracy vs compression",
        "",
        f"Task: {data['task']}; {data['examples']} test examples (easy-VQA test images, unseen in training).",
        f"Machine: {data['machine']}. Schedule: {data['schedule']}.",
        "",
        "| method | accuracy | % of (a) | colour | shape | decoder tokens | original tokens | total ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rel = f"{100 * r['accuracy'] / ref:.0f}%" if ref else "n/a"
        ratio = r["original_tokens"] / r["decoder_tokens"]
        by_kind = r.get("by_kind", {})
        kinds = " | ".join(f"{by_kind[k]:.3f}" if k in by_kind else "n/a" for k in ("shape-colour", "shape-what"))
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {rel} | {kinds} | {r['decoder_tokens']:.1f} | "
                     f"{r['original_tokens']:.1f} | {ratio:.2f}x |")
    lines += ["", f"Chance level (uniform over the answers of the question type): {data.get('chance', 'n/a')}; the "
              "colour and shape columns split the accuracy by question type.", ""]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", default="runs/interleaved-shapes-full/final")
    ap.add_argument("--soft", default="runs/interleaved-shapes-soft/final")
    ap.add_argument("--soft-question", default="runs/interleaved-shapes-soft-question/final",
                    help="a question-aware soft model (configs/train/interleaved-shapes-soft-question.yaml)")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--split", choices=["validation", "test"], default="validation",
                    help="validation while choosing a design; test once, for the reported numbers")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--part", choices=["full", "soft", "question", "all", "report"], default="all")
    ap.add_argument("--schedule", default="CPU shortened schedule (see README)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--name", default="interleaved",
                    help="results file stem under benchmarks/results (keeps runs of other schedules apart)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / f"{args.name}.json"
    data = json.loads(json_path.read_text()) if json_path.exists() and args.part != "all" else {"rows": []}
    kinds = ["shape-colour", "shape-what"]
    examples = build_examples("shapes", args.split, args.examples, seed=1, num_images=(3,), kinds=kinds)
    prompts = [e.prompt() for e in examples]
    data.update({"task": "easy-VQA, 3 images per prompt, 'What colour is the shape in the second image?' / "
                         "'What shape is in the first image?'",
                 "examples": len(examples), "split": args.split, "machine": machine_line(),
                 "schedule": args.schedule, "chance": "colour 1/8, shape 1/3 (mean 0.23)"})
    if args.part != "report":
        hard_prompts = hard_text(prompts, 0.5)
        def replaced(row: dict) -> bool:
            part = "full" if row["method"][:3] in ("(a)", "(b)") else (
                "question" if QUESTION_LABEL in row["method"] else "soft")
            return args.part in (part, "all")

        keep = [r for r in data["rows"] if not replaced(r)]
        new = []
        if args.part in ("full", "all"):
            new += run_full(args.full, examples, prompts, hard_prompts, args.batch_size)
        if args.part in ("soft", "all"):
            new += run_soft(args.soft, examples, prompts, hard_prompts, args.batch_size)
        if args.part == "question" or (args.part == "all" and Path(args.soft_question).is_dir()):
            new += run_soft(args.soft_question, examples, prompts, hard_prompts, args.batch_size, QUESTION_LABEL)
        data["rows"] = sorted(keep + new, key=_order)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
    write_report(data, args.name)
    print((OUT / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
