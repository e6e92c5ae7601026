"""Reconstruction BLEU-4 on held-out text against training steps, for icae / kv / meanpool at --ratio (default 4x: --window tokens -> 1/4 as many positions).

Trains from the shipped recipe (``configs/train/<method>-pretrain.yaml``) with the given overrides and, at each step
in ``--points`` (and at step 0, the untrained compressor), pauses training to regenerate ``--eval-texts`` held-out
windows (the recipe's held-out documents) greedily and score BLEU-4 and positional token accuracy, plus the
teacher-forced held-out loss / token accuracy on ``--eval-batches`` batches. Training stops at the first point that
would not fit in ``--budget-minutes`` of wall clock (measured step time), so the curve always ends on an evaluated
point. Each point is written to JSON + Markdown under benchmarks/results/ as soon as it exists, and with
``--save-to`` the compressor is saved there (``save_pretrained``, swapped in atomically) at every point after 0 and
checked to load through ``create_compressor(path)`` and generate.

``--bf16`` runs the training step under ``torch.autocast(bfloat16)`` (master weights stay float32); on CPUs with
AMX / AVX512-BF16 this is the fastest setting. Evaluation always runs in float32.

    PYTHONPATH=. python benchmarks/soft_reconstruction_curve.py --method icae --points 2,4 --batch-size 1 --eval-texts 2
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import time
from pathlib import Path

import torch
from common import describe_machine, machine_stamp  # benchmarks/ is on sys.path: the script's folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="icae", choices=["icae", "kv", "meanpool"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the base model's weights (bfloat16: no per-step casts on AMX CPUs; the adapter stays float32)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "eager_float32"],
                    help="attention implementation (eager_float32: the model's eager attention in float32)")
    ap.add_argument("--window", type=int, default=128, help="tokens per window")
    ap.add_argument("--ratio", type=int, default=4, help="compression ratio: tokens per pooled group or per slot")
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: the recipe's)")
    ap.add_argument("--decoder-lora-r", type=int, default=0, help="> 0: train a decoder-side LoRA of this rank too")
    ap.add_argument("--budget-cpu-minutes", type=float, default=0.0,
                    help="stop before a point that would end past this much process CPU time (fair under load)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--points", default="2,4", help="training steps at which to evaluate (step 0 is always evaluated)")
    ap.add_argument("--budget-minutes", type=float, default=0.0, help="stop before a point that would end past this")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    ap.add_argument("--bf16", action="store_true", help="autocast the training step to bfloat16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", default="no", choices=["no", "layers"], help="the trainer's compile setting")
    ap.add_argument("--frozen-matmuls", default="native", choices=["native", "int8"],
                    help="the trainer's frozen_matmuls setting (int8: SwitchBack)")
    ap.add_argument("--lm-loss", default="chunked", choices=["chunked", "sliced"],
                    help="the trainer's lm_loss setting (sliced: the loss of every curve before 2026-12-08)")
    ap.add_argument("--eval-texts", type=int, default=8)
    ap.add_argument("--eval-batches", type=int, default=4, help="teacher-forced held-out batches per point")
    ap.add_argument("--init-from", default=None, help="continue from a saved compressor folder (fresh optimizer)")
    ap.add_argument("--seed", type=int, default=1,
                    help="train and data seed of a continuation (--init-from); another one gives a new window order")
    ap.add_argument("--output-dir", default="runs/curve")
    ap.add_argument("--save-to", default=None, help="save_pretrained the compressor here at every point after 0")
    ap.add_argument("--out", default=None, help="results file stem (default benchmarks/results/<method>_reconstruction_curve)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    from mmcompress.soft.tasks import held_out_windows
    import mmcompress  # noqa: F401  (registers the training tasks)
    from mmcompress.training import Trainer, TrainConfig, load_recipe
    from mmcompress.training import TASKS

    points = sorted({int(x) for x in args.points.split(",") if int(x) > 0})
    out_dir = Path(args.output_dir) / args.method
    shutil.rmtree(out_dir, ignore_errors=True)  # a curve starts from scratch; an old log would mix in
    sizes = {"model.chunk_tokens": args.window, "data.context_tokens": args.window}
    sizes.update({"model.pool_ratio": args.ratio} if args.method == "meanpool"
                 else {"model.num_slots": args.window // args.ratio})
    if args.lora_r:
        sizes.update({"model.lora_r": args.lora_r, "model.lora_alpha": args.lora_r})
    if args.decoder_lora_r:
        sizes["model.decoder_lora_r"] = args.decoder_lora_r
    recipe = load_recipe(f"configs/train/{args.method}-pretrain.yaml", {
        **sizes, "model.model": args.model, "model.device": "cpu", "model.dtype": args.dtype,
        "train.max_steps": points[-1], "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.warmup_steps": args.warmup, "train.schedule": args.schedule, "train.save_every": 0,
        "train.eval_every": 0, "train.eval_batches": args.eval_batches, "train.log_every": 1,
        "train.output_dir": str(out_dir), "train.progress": False, "train.compile": args.compile,
        "train.frozen_matmuls": args.frozen_matmuls, "train.lm_loss": args.lm_loss,
    })
    if args.init_from:  # another data seed, so the continuation sees examples the first run did not
        recipe["init_from"] = args.init_from
        recipe["train"]["seed"] = recipe["data"]["seed"] = args.seed
    torch.manual_seed(0)
    setup = TASKS.get(recipe["task"])(recipe)
    module = setup.module
    if args.bf16:  # the trainer calls training_step, not forward, so autocast goes around it here
        step = module.training_step

        @functools.wraps(step)
        def autocast_step(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return step(batch)

        module.training_step = autocast_step
    trainer = Trainer(module, TrainConfig.from_dict(recipe["train"]), setup.train_dataset, setup.eval_dataset,
                      setup.collate_fn)
    compressor = _compressor_of(setup)
    compressor.llm.set_attn_implementation(args.attn)
    tok = compressor.tokenizer
    texts = [tok.decode(w) for w in held_out_windows(recipe, tok)[: args.eval_texts]]

    t_start = time.perf_counter()
    train_seconds, cpu_seconds, curve = 0.0, 0.0, []

    def evaluate(step: int, teacher_forced: dict) -> None:
        module.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            report = evaluate_reconstruction(compressor, texts, batch_size=args.eval_texts)
        module.train()
        curve.append({"step": step, "examples_seen": step * args.batch_size, "train_seconds": round(train_seconds, 1),
                      "train_cpu_seconds": round(cpu_seconds, 1),
                      "wall_seconds": round(time.perf_counter() - t_start, 1), "bleu4": report.bleu4,
                      "token_accuracy": report.token_accuracy, "ratio": report.ratio,
                      "eval_seconds": round(time.perf_counter() - t0, 1),
                      "heldout_tf_loss": teacher_forced.get("eval/loss"),
                      "heldout_tf_token_accuracy": teacher_forced.get("eval/token_accuracy"),
                      "sample": report.outputs[0][:200]})
        print(json.dumps(curve[-1]), flush=True)

    evaluate(0, {f"eval/{k}": v for k, v in trainer.evaluate().items()})
    write(args, out_dir, curve, texts)
    for point in points:
        if args.budget_cpu_minutes and trainer.step:
            if cpu_seconds + (point - trainer.step) * cpu_seconds / trainer.step > args.budget_cpu_minutes * 60:
                print(f"stopping before step {point}: past the {args.budget_cpu_minutes} CPU-minute budget", flush=True)
                break
        if args.budget_minutes and trainer.step:
            per_step = train_seconds / trainer.step
            eval_cost = max(c["eval_seconds"] for c in curve) + 30
            if time.perf_counter() - t_start + (point - trainer.step) * per_step + eval_cost > args.budget_minutes * 60:
                print(f"stopping before step {point}: it would end past the {args.budget_minutes} min budget", flush=True)
                break
        trainer.config.max_steps = point  # train() runs up to max_steps; the lr schedule keeps the full run's length
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()  # ends with a teacher-forced held-out evaluation (eval_every=0), logged to history
        train_seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        evaluate(point, trainer.history[-1])
        write(args, out_dir, curve, texts)
        if args.save_to:
            save(compressor, Path(args.save_to), point, args)


def _compressor_of(setup):
    """The compressor whose module the task trains (the task's finalize closes over it)."""
    for cell in setup.finalize.__closure__ or ():
        if hasattr(cell.cell_contents, "save_pretrained") and hasattr(cell.cell_contents, "tokenizer"):
            return cell.cell_contents
    raise RuntimeError("could not find the compressor of the training task")


def save(compressor, path: Path, step: int, args) -> None:
    """save_pretrained into a temporary folder, swap it in, then check it loads and generates."""
    from mmcompress import create_compressor

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    compressor.save_pretrained(tmp)
    (tmp / "TRAINED.json").write_text(json.dumps({"method": args.method, "step": step, "batch_size": args.batch_size,
                                                  "lr": args.lr, "bf16": args.bf16}) + "\n")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    loaded = create_compressor(str(path), device="cpu")
    soft = loaded.compress_batch(["The quick brown fox jumps over the lazy dog near the river bank."])
    text = loaded.reconstruct(soft, max_new_tokens=16)[0]
    ready = path.parent / "READY"
    lines = [x for x in (ready.read_text().splitlines() if ready.exists() else []) if not x.startswith(f"{path.name}:")]
    lines.append(f"{path.name}: {path} ({args.method}, {args.ratio}x: {args.window}-token windows, SmolLM2-135M; trained {step} steps "
                 f"of batch {args.batch_size}; loads with create_compressor('{path}') and generates, e.g. {text[:40]!r})")
    ready.write_text("\n".join(sorted(lines)) + "\n")
    print(f"saved {path} at step {step}; reload generated {text!r}", flush=True)
    del loaded


def write(args, out_dir: Path, curve: list[dict], texts: list[str]) -> None:
    log_path = out_dir / "log.jsonl"
    log = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    train_log = [{"step": r["step"], "loss": r["loss"], "token_accuracy": r.get("token_accuracy")} for r in log if "loss" in r]
    last = curve[-1]
    steps_per_s = last["step"] / last["train_seconds"] if last["train_seconds"] else 0.0
    stamp = machine_stamp()
    machine = f"{describe_machine(stamp)}; shared with other jobs (CPU time is the fair budget)"
    data = {"method": args.method, "model": args.model, "args": vars(args), "machine": machine, "machine_stamp": stamp,
            "command": command(args),
            "schedule": "shortened CPU schedule", "steps_per_s": steps_per_s, "curve": curve, "train_log": train_log,
            "reference_text": texts[0][:200]}
    stem = Path(args.out or f"benchmarks/results/{args.method}_reconstruction_curve")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# {args.method} reconstruction at {args.ratio}x vs training steps ({args.model}, shortened CPU schedule)", "",
             *([f"Continued from `{args.init_from}` (steps below count from there; fresh optimizer; data seed {args.seed}, so a new order of the training windows).", ""]
               if args.init_from else []),
             f"Machine: {machine}. Command: `{command(args)}`. Training so far: {last['step']} steps of batch "
             f"{args.batch_size} in {last['train_seconds']:.0f} s ({steps_per_s:.3f} steps/s, evaluation excluded).", "",
             f"Held-out (validation part): greedy reconstruction of {len(texts)} windows of {args.window} tokens from the last 5% of documents of "
             "corpus_wiki_news.txt (BLEU-4, positional token accuracy); teacher-forced loss / token accuracy on "
             f"{args.eval_batches} held-out batches.", "",
             "| step | examples | train s | BLEU-4 | token acc. (greedy) | held-out loss (TF) | token acc. (TF) |",
             "|---|---|---|---|---|---|---|"]
    for p in curve:
        tf_loss, tf_acc = p["heldout_tf_loss"], p["heldout_tf_token_accuracy"]
        lines.append(f"| {p['step']} | {p['examples_seen']} | {p['train_seconds']:.0f} | {p['bleu4']:.4f} | "
                     f"{p['token_accuracy']:.4f} | {_fmt(tf_loss, '.3f')} | {_fmt(tf_acc, '.3f')} |")
    lines += ["", f"Last sample (step {last['step']}): {last['sample']!r}", "", f"Reference: {texts[0][:200]!r}"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def command(args) -> str:
    parts = [f"--method {args.method}", f"--dtype {args.dtype}", f"--attn {args.attn}", f"--window {args.window}",
             f"--points {args.points}", f"--batch-size {args.batch_size}", f"--lr {args.lr}",
             f"--warmup {args.warmup}", f"--schedule {args.schedule}", f"--eval-texts {args.eval_texts}",
             f"--eval-batches {args.eval_batches}"]
    optional = {"--ratio": args.ratio if args.ratio != 4 else None, "--budget-minutes": args.budget_minutes or None,
                "--bf16": "" if args.bf16 else None, "--lora-r": args.lora_r or None,
                "--decoder-lora-r": args.decoder_lora_r or None,
                "--budget-cpu-minutes": args.budget_cpu_minutes or None, "--threads": args.threads or None,
                "--save-to": args.save_to, "--init-from": args.init_from,
                "--seed": getattr(args, "seed", 1) if args.init_from and getattr(args, "seed", 1) != 1 else None,
                "--compile": getattr(args, "compile", "no") if getattr(args, "compile", "no") != "no" else None,
                "--frozen-matmuls": (getattr(args, "frozen_matmuls", "native")
                                     if getattr(args, "frozen_matmuls", "native") != "native" else None),
                "--lm-loss": getattr(args, "lm_loss", "chunked") if getattr(args, "lm_loss", "chunked") != "chunked"
                else None,
                "--out": args.out}
    parts += [f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}".rstrip()
              for flag, value in optional.items() if value is not None]
    return "PYTHONPATH=. python benchmarks/soft_reconstruction_curve.py " + " ".join(parts)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
