"""LLMLingua-2 student vs its teacher: agreement, answer retention and speed, side by side in one run.

    PYTHONPATH=. python benchmarks/llmlingua2_vs_teacher.py [--run runs/llmlingua2-minilm-longllmlingua]
        [--classifier RUN/classifier] [--teacher longllmlingua] [--data ../shared/data/multidoc_qa_dev.jsonl]
        [--limit 30] [--out benchmarks/results/llmlingua2_vs_longllmlingua]

- agreement: on the recipe's held-out passages (never trained on), the teacher and the student compress each at
  the teacher's rate, exactly as the recipe labelled them (a question-aware teacher gets each passage as a
  one-document prompt with the recipe's question); we report the token-sequence similarity of the two compressed
  passages (difflib ratio over SmolLM2 tokens, as ../shared/peer/agreement.py computes it; 1.0 = identical) and the
  student's word-label accuracy and keep-F1 against the teacher's labels;
- answer retention and compression latency on multi-document QA prompts at several rates (random as the floor);
- speed-up: the teacher's mean seconds per prompt over the student's, measured in the same run.
The teacher runs with the recipe's options (``teacher.options``) throughout. Writes ``OUT.{json,md}``.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED", REPO.parent / "shared"))
if not SHARED.exists():
    SHARED = Path("/work/shared")


def similarity(a: str, b: str, encode) -> float:
    ta, tb = encode(a), encode(b)
    if not ta and not tb:
        return 1.0
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def compressed_passage(result) -> str:
    """The compressed text of the prompt's first context / text segment (the passage), without the question."""
    from mmcompress.prompt import Role

    for seg in result.prompt.segments:
        if getattr(seg, "role", None) in (Role.CONTEXT, Role.TEXT):
            return seg.text
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/llmlingua2-minilm", help="training output folder (classifier + held-out)")
    ap.add_argument("--classifier", help="classifier folder (default: RUN/classifier)")
    ap.add_argument("--teacher", default=None, help="teacher compressor (default: the recipe's)")
    ap.add_argument("--data", default=str(SHARED / "data" / "multidoc_qa_dev.jsonl"))
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--passages", type=int, default=30)
    ap.add_argument("--rates", default="0.5,0.33")
    ap.add_argument("--out", default="benchmarks/results/llmlingua2_vs_teacher")
    ap.add_argument("--machine", default=None, help="machine description for the report (default: platform info)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()

    import torch
    import yaml

    torch.set_num_threads(args.threads)

    from mmcompress.evaluation.harness import HardCompressorSystem, evaluate, load_qa_file, random_floor_name
    from mmcompress.factory import create_compressor
    from mmcompress.hard.llmlingua2_train import kept_spans_from_result, word_labels
    from mmcompress.models import load_tokenizer

    run = Path(args.run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    teacher_cfg = recipe.get("teacher") or {}
    teacher_name = args.teacher or teacher_cfg.get("method", "selective_context")
    teacher_rate = float(teacher_cfg.get("rate", 0.5))
    teacher = create_compressor(teacher_name, **(teacher_cfg.get("options") or {}))
    student = create_compressor(args.classifier or str(run / "classifier"))
    random = create_compressor("random", unit=student.selection_unit)  # the student keeps words: random words
    tok = load_tokenizer("smollm2-135m")
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731

    # warm both (model loading is not compression time)
    warm_kwargs = {"question": teacher_cfg["question"]} if teacher_cfg.get("question") else {}
    for c in (teacher, student, random):
        c.compress(["Warm up the model with a short sentence. And another one here."], rate=0.5, **warm_kwargs)

    # ---- agreement on held-out passages
    held = [json.loads(x) for x in (run / "eval_passages.jsonl").read_text().splitlines() if x.strip()][: args.passages]
    texts = [r["text"] for r in held]
    question = teacher_cfg.get("question")
    prompts, kwargs = ([[t] for t in texts], {"question": question}) if question else (texts, {})
    t_out = teacher.compress_batch(prompts, rate=teacher_rate, **kwargs)
    s_out = student.compress_batch(prompts, rate=teacher_rate, **kwargs)
    r_out = random.compress_batch(prompts, rate=teacher_rate, **kwargs)
    sims = [similarity(compressed_passage(a), compressed_passage(b), encode) for a, b in zip(t_out, s_out)]
    rand_sims = [similarity(compressed_passage(a), compressed_passage(b), encode) for a, b in zip(t_out, r_out)]
    scorer = student.scorer
    accs, f1s = [], []
    for text, t_res, s_res in zip(texts, t_out, s_out):
        spans = scorer.tokenize([text])[0].spans
        gold = word_labels(spans, kept_spans_from_result(t_res))
        pred = word_labels(spans, kept_spans_from_result(s_res))
        accs.append(float((gold == pred).mean()))
        tp = float(((gold == 1) & (pred == 1)).sum())
        p, r = tp / max(1, pred.sum()), tp / max(1, gold.sum())
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    agreement = {"passages": len(texts), "rate": teacher_rate, "question": question,
                 "token_similarity": float(np.mean(sims)),
                 "token_similarity_random_vs_teacher": float(np.mean(rand_sims)),
                 "word_label_accuracy": float(np.mean(accs)), "keep_f1": float(np.mean(f1s))}

    # ---- retention and latency on QA prompts
    rates = [float(x) for x in args.rates.split(",")]
    examples = load_qa_file(args.data, args.limit)
    systems = [HardCompressorSystem(teacher, None, name=f"{teacher_name} (teacher)"),
               HardCompressorSystem(student, None, name="llmlingua2 (student)"),
               HardCompressorSystem(random, None, name=random_floor_name(random.selection_unit))]
    t0 = time.perf_counter()
    report = evaluate(examples, systems, rates, None, data_name=args.data)
    by = {(r.system, r.requested_rate): r for r in report.results}
    speedups = {str(rate): by[(systems[0].name, rate)].latency_s / by[(systems[1].name, rate)].latency_s for rate in rates}
    out = {
        "machine": args.machine or machine_line(),
        "teacher": teacher_name, "teacher_options": teacher_cfg.get("options"), "student": str(args.classifier or run / "classifier"),
        "encoder": (recipe.get("model") or {}).get("encoder"), "train_steps": (recipe.get("train") or {}).get("max_steps"),
        "agreement": agreement, "qa": report.to_dict()["results"], "qa_examples": len(examples),
        "qa_original_retention": report.original["retention"], "speedup_teacher_over_student": speedups,
        "seconds": round(time.perf_counter() - t0, 1), "command": shlex.join(["python", *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# LLMLingua-2 (MiniLM student) vs its teacher ({teacher_name})", "",
          f"Machine: {out['machine']}. Command: `{out['command']}`", "",
          f"Teacher options: `{json.dumps(out['teacher_options'])}`; student: {out['encoder']} trained "
          f"{out['train_steps']} steps (`{out['student']}`).", "",
          f"Agreement on {len(texts)} held-out corpus passages at rate {teacher_rate}: token-sequence similarity "
          f"{agreement['token_similarity']:.3f} (random vs teacher: {agreement['token_similarity_random_vs_teacher']:.3f}), "
          f"word-label accuracy {agreement['word_label_accuracy']:.3f}, keep-F1 {agreement['keep_f1']:.3f}.", "",
          f"Multi-document QA ({len(examples)} rows of `{Path(args.data).name}`; original answer retention "
          f"{report.original['retention']:.3f}):", "",
          "| method | requested rate | achieved rate | answer retention | latency (s/prompt) |", "| --- | --- | --- | --- | --- |"]
    for r in report.results:
        md.append(f"| {r.system} | {r.requested_rate} | {r.rate:.3f} | {r.retention:.3f} | {r.latency_s:.3f} |")
    md += ["", "Speed-up of the student over the teacher (compression time per prompt): "
           + ", ".join(f"{v:.1f}x at rate {k}" for k, v in speedups.items()), ""]
    Path(args.out + ".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
