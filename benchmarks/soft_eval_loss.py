"""Held-out LM loss of a briefly trained gist / autocompressor run against the same model untrained, plus a control
that shows whether the compressed vectors carry the text (gist: the continuation with the text removed).

    PYTHONPATH=. python benchmarks/soft_eval_loss.py runs/gist-cpu runs/autocompressor-cpu --batches 4

Writes benchmarks/results/soft_eval_loss.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mean_loss(module, loader, batches: int, transform=None) -> float:
    import random

    if hasattr(loader.collate_fn, "rng"):  # the same random segment lengths for every model compared
        loader.collate_fn.rng = random.Random(0)
    losses = []
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        if transform is not None:
            batch = transform(batch)
        losses.append(float(module.training_step(batch)["loss"]))
    return sum(losses) / len(losses)


def drop_prompt(batch):
    """Gist control: the text before the gists becomes padding, so the gists have nothing to summarise."""
    from mmcompress.soft.gist import PAD, PROMPT

    batch = dict(batch)
    segments = batch["segments"].clone()
    segments[segments == PROMPT] = PAD
    batch["segments"] = segments
    return batch


def main() -> None:
    import yaml
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    from mmcompress.training.tasks import TASKS

    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soft_eval_loss"))
    args = p.parse_args()
    torch.set_num_threads(1)
    import mmcompress  # noqa: F401  registers the tasks

    results = []
    for run in args.runs:
        run = Path(run)
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        setup = TASKS.get(recipe["task"])(recipe)
        module = setup.module.eval()
        loader = DataLoader(setup.eval_dataset, batch_size=recipe["train"]["batch_size"], shuffle=False,
                            collate_fn=setup.collate_fn)
        steps = max((json.loads(line).get("step", 0) for line in (run / "log.jsonl").read_text().splitlines()), default=0)
        with torch.no_grad():
            row = {"run": str(run), "task": recipe["task"], "steps": steps, "untrained": mean_loss(module, loader, args.batches)}
            if recipe["task"] == "gist":
                row["untrained_no_text"] = mean_loss(module, loader, args.batches, drop_prompt)
            weights = run / "final" / "trainable.safetensors"
            if not weights.is_file():  # a run stopped early: its latest checkpoint
                from mmcompress.training.trainer import checkpoints

                weights = checkpoints(run)[-1] / "trainable.safetensors"
                steps = int(weights.parent.name.split("-")[-1])
                row["steps"] = steps
            module.load_state_dict(load_file(str(weights)), strict=False)
            row["trained"] = mean_loss(module, loader, args.batches)
            if recipe["task"] == "gist":
                row["trained_no_text"] = mean_loss(module, loader, args.batches, drop_prompt)
        results.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "batches": args.batches, "results": results},
                                                   indent=1) + "\n")
    lines = [f"Held-out LM loss (nats/token, {args.batches} eval batches), {machine}.", "",
             "| run | task | steps | untrained | trained | untrained, text removed | trained, text removed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        f = lambda k: f"{r[k]:.3f}" if k in r else "n/a"  # noqa: E731
        lines.append(f"| {r['run']} | {r['task']} | {r['steps']} | {f('untrained')} | {f('trained')} | "
                     f"{f('untrained_no_text')} | {f('trained_no_text')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
