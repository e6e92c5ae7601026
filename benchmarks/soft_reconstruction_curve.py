"""Reconstruction BLEU-4 on held-out text against training steps, for icae / kv at 4x (128 tokens -> 32 slots).

Trains from the shipped recipe (``configs/train/<method>-pretrain.yaml``) with the given overrides, checkpointing
every ``--eval-every`` steps, then regenerates ``--eval-texts`` held-out windows (the recipe's held-out documents)
from every checkpoint (and from the untrained compressor, step 0) and scores BLEU-4 and token accuracy. Writes JSON
+ Markdown under benchmarks/results/.

    PYTHONPATH=. python benchmarks/soft_reconstruction_curve.py --method icae --steps 6 --eval-every 3 --batch-size 2
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="icae", choices=["icae", "kv"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-every", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-texts", type=int, default=8)
    ap.add_argument("--output-dir", default="runs/curve")
    ap.add_argument("--train-only", action="store_true", help="train and checkpoint; evaluate later with --eval-only")
    ap.add_argument("--eval-only", action="store_true",
                    help="only evaluate the checkpoints an earlier run left in --output-dir (train and evaluate in "
                         "two processes when one would run past a time limit)")
    ap.add_argument("--out", default=None, help="results file stem (default benchmarks/results/<method>_reconstruction_curve)")
    args = ap.parse_args()

    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    from mmcompress.registry import COMPRESSORS
    from mmcompress.soft.tasks import held_out_windows
    from mmcompress.training import checkpoints, load_recipe, run_recipe

    out_dir = Path(args.output_dir) / args.method
    recipe = load_recipe(f"configs/train/{args.method}-pretrain.yaml", {
        "model.model": args.model, "model.device": "cpu", "model.dtype": "float32",
        "train.max_steps": args.steps, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.warmup_steps": 0, "train.save_every": args.eval_every, "train.eval_every": 0,
        "train.keep_checkpoints": 1000, "train.log_every": 1, "train.output_dir": str(out_dir), "train.progress": False,
    })
    if not args.eval_only:
        run_recipe(recipe)
        if args.train_only:
            return

    from safetensors.torch import load_file

    compressor = COMPRESSORS.get(args.method)(**recipe["model"])
    tok = compressor.tokenizer
    texts = [tok.decode(w) for w in held_out_windows(recipe, tok)[: args.eval_texts]]
    fresh = {n: p.detach().clone() for n, p in compressor.module.named_parameters() if p.requires_grad}
    points = []
    for step, weights in [(0, fresh)] + [(int(p.name.split("-")[1]), load_file(str(p / "trainable.safetensors")))
                                         for p in checkpoints(out_dir)]:
        compressor.load_trainable(weights)
        report = evaluate_reconstruction(compressor, texts, batch_size=args.eval_texts)
        points.append({"step": step, "bleu4": report.bleu4, "token_accuracy": report.token_accuracy,
                       "ratio": report.ratio, "sample": report.outputs[0][:200]})
        print(json.dumps(points[-1]), flush=True)
    log = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]
    train_acc = [{"step": r["step"], "loss": r["loss"], "token_accuracy": r.get("token_accuracy")} for r in log if "loss" in r]
    train_seconds = sum(1.0 / r["steps_per_s"] for r in log if r.get("steps_per_s"))  # log_every=1: one step per record
    steps_per_s = len(train_acc) / train_seconds if train_seconds else 0.0
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads (2-core CPU shared, no GPU)"
    data = {"method": args.method, "model": args.model, "args": vars(args), "machine": machine,
            "schedule": "shortened CPU schedule", "train_seconds": train_seconds,
            "steps_per_s": steps_per_s, "curve": points, "train_log": train_acc,
            "reference_text": texts[0][:200]}
    stem = Path(args.out or f"benchmarks/results/{args.method}_reconstruction_curve")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    cmd = (f"PYTHONPATH=. python benchmarks/soft_reconstruction_curve.py --method {args.method} --steps {args.steps} "
           f"--eval-every {args.eval_every} --batch-size {args.batch_size} --lr {args.lr} --eval-texts {args.eval_texts}")
    lines = [f"# {args.method} reconstruction at 4x vs steps ({args.model}, shortened CPU schedule)", "",
             f"Machine: {machine}. Training: {args.steps} steps of batch {args.batch_size} in {train_seconds:.0f} s "
             f"({steps_per_s:.4f} steps/s). Command: `{cmd}` (run as `--train-only` then `--eval-only` with the same "
             "arguments, each under 10 minutes)", "",
             f"Held-out: {len(texts)} windows of 128 tokens from the last 5% of documents of corpus_wiki_news.txt.", "",
             "| step | BLEU-4 | token accuracy | ratio |", "|---|---|---|---|"]
    lines += [f"| {p['step']} | {p['bleu4']:.4f} | {p['token_accuracy']:.4f} | {p['ratio']:.2f}x |" for p in points]
    lines += ["", "Teacher-forced training loss / token accuracy per step:", "",
              "| step | loss | token accuracy |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['loss']:.3f} | {r['token_accuracy']:.3f} |" for r in train_acc]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
