"""Soft training on the CPU's cores: one process with all threads against data-parallel processes of one thread
each (``torchrun``, gloo), the same global batch, side by side in alternating rounds.

Each run is ``mmcompress train`` on the 4x recipe's first stage (meanpool, SmolLM2-135M, windows of 64 tokens),
shortened to ``--steps`` steps. Seconds per step come from the run's own log (``steps_per_s`` per logging window),
leaving out the first window (model loading, allocator and thread warm-up). Both sides see the same examples in each
step: N processes at batch B / N split the single process's batch of B.

    PYTHONPATH=. python benchmarks/soft_train_processes.py --processes 2 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import add_common_args, write_results

ROOT = Path(__file__).resolve().parents[1]


def recipe(steps: int, batch_size: int) -> dict:
    from mmcompress.training.tasks import load_recipe

    r = load_recipe("soft-smollm2-4x")
    first = r.pop("stages")[0]
    r["train"] = {**r["train"], **first.get("train", {}), "max_steps": steps, "batch_size": batch_size,
                  "save_every": 0, "log_every": 10, "eval_batches": 1, "progress": False}
    r["data"] = {**r["data"], "eval_examples": 4}
    return r


def run(side: str, processes: int, steps: int, batch: int, folder: Path) -> list[float]:
    """One training run; seconds per step of each logging window after the first."""
    per_process = batch // processes
    path = folder / f"{side}.yaml"
    out = folder / side
    path.write_text(yaml.safe_dump(recipe(steps, per_process)))
    threads = os.cpu_count() // processes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    train = ["-m", "mmcompress", "train", "--config", str(path), "--output", str(out), "--overwrite"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *train]
    else:
        command = [sys.executable, *train]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: the {side} run failed:\n{done.stderr[-2000:]}")
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [1.0 / r["steps_per_s"] for r in logs if "steps_per_s" in r][1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="global batch (split across the processes)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2, help="runs per side, in alternating order")
    add_common_args(ap, "benchmarks/results/soft_train_processes")
    args = ap.parse_args()
    if args.batch_size % args.processes:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split across {args.processes} processes")
    sides = {"one process": 1, f"{args.processes} processes": args.processes}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                windows = run(side.replace(" ", "-"), sides[side], args.steps, args.batch_size, Path(tmp))
                seconds[side] += windows
                print(f"round {r} {side}: {statistics.median(windows):.2f} s/step", flush=True)
    base = statistics.median(seconds["one process"])
    rows = [{"side": side, "processes": n, "threads_per_process": os.cpu_count() // n,
             "batch_per_process": args.batch_size // n, "s_per_step": statistics.median(seconds[side]),
             "min_s": min(seconds[side]), "max_s": max(seconds[side]), "speedup": base / statistics.median(seconds[side])}
            for side, n in sides.items()]
    notes = (f"Global batch {args.batch_size}, {args.steps} steps per run, {args.rounds} runs per side; seconds per "
             "step are the medians over the logging windows (10 steps each) after the first.")
    print(write_results(args.out, "Soft training: one process against data-parallel processes", rows, notes=notes,
                        extra={"seconds": seconds})["rows"])


if __name__ == "__main__":
    main()
