"""How long a shipped staged recipe took when run end to end as one ``mmcompress train`` command, stage by stage:
the training wall clock (summed from the trainer's steps per second: compiling included, evaluation excluded, as
the cards count it) and the stage's whole wall clock (from the trainer's start stamp to the stage's saved result:
evaluation and saving included), with the stage's last held-out evaluation and the machine the trainer stamped.
Each stage's log and machine stamps are copied beside the results (``<out>_<stage>_train_log.jsonl``,
``<out>_<stage>_machines.jsonl``), so the figures can be checked after ``runs/`` is gone.

    mmcompress train --config soft-smollm2-4x                           # runs/soft-smollm2-4x
    PYTHONPATH=. python benchmarks/recipe_wall_clock.py --recipe soft-smollm2-4x --out benchmarks/results/soft_4x_recipe

A run written elsewhere (``mmcompress train --config ... --output runs/other``) is read with ``--output runs/other``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)
from ship_trained import recipe_training  # noqa: E402


def started(machines: Path) -> list[datetime]:
    """When each piece of a run started training (one line of ``machines.jsonl`` per start or ``--resume``)."""
    rows = [json.loads(line) for line in machines.read_text().splitlines() if line.strip()]
    return [datetime.strptime(r["started"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) for r in rows]


def saved(folder: Path) -> datetime:
    """When a stage's result was saved: its trained tensors' modification time."""
    from mmcompress.soft.base import WEIGHTS_FILE

    return datetime.fromtimestamp((folder / "final" / WEIGHTS_FILE).stat().st_mtime, tz=timezone.utc)


def main() -> None:
    from mmcompress.training.tasks import load_recipe, stage_names, stage_recipes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="the shipped staged recipe that was run (name or path)")
    ap.add_argument("--out", required=True, help="path prefix of the results (.json, .md) and the copied logs")
    ap.add_argument("--output", help="the folder the run wrote (`mmcompress train --output`; default: the recipe's)")
    args = ap.parse_args()

    recipe = load_recipe(args.recipe, {"train.output_dir": args.output} if args.output else None)  # as train --output
    folders = [Path(stage["train"]["output_dir"]) for stage in stage_recipes(recipe)]
    names = stage_names(recipe)
    out = Path(args.out)
    logs = []
    for name, folder in zip(names, folders):  # the committed copies are what the card-style sums read
        for source, kind in ((folder / "log.jsonl", "train_log"), (folder / "machines.jsonl", "machines")):
            if not source.is_file():
                raise SystemExit(f"error: {source} not found: run `mmcompress train --config {args.recipe}` first")
            shutil.copyfile(source, out.with_name(f"{out.name}_{name}_{kind}.jsonl"))
        logs.append(str(out.with_name(f"{out.name}_{name}_train_log.jsonl")))
    training = recipe_training(args.recipe, logs)

    starts = [started(folder / "machines.jsonl") for folder in folders]
    rows = []
    for stage, folder, begun in zip(training["stages"], folders, starts):
        whole = (saved(folder) - begun[0]).total_seconds() if len(begun) == 1 else None  # resumed: gaps inside
        rows.append({"stage": stage["stage"], "steps": stage["steps"], "batch_size": stage["batch_size"],
                     "train_wall_minutes": round(stage["train_wall_seconds"] / 60, 1),
                     "stage_wall_minutes": None if whole is None else round(whole / 60, 1),
                     "eval_token_accuracy": stage["eval_token_accuracy"], "machine": "; ".join(stage["machines"])})
    first_start, last_save = starts[0][0], saved(folders[-1])
    one_piece = all(len(begun) == 1 for begun in starts)
    total = {"stage": "all", "steps": training["steps"], "batch_size": None,
             "train_wall_minutes": training["train_wall_minutes"],
             "stage_wall_minutes": round((last_save - first_start).total_seconds() / 60, 1) if one_piece else None,
             "eval_token_accuracy": None, "machine": None}
    for row in rows + [total]:
        print(row)
    write_results(args.out, f"{args.recipe} run end to end as one command: wall clock per stage", rows + [total],
                  extra={"started": first_start.isoformat(), "saved": last_save.isoformat(), "one_piece": one_piece},
                  notes="train_wall_minutes: summed from the trainer's steps per second (compiling included, "
                        "evaluation excluded). stage_wall_minutes: from the trainer's start stamp to the saved "
                        "result (evaluation and saving included; none for a stage resumed in pieces). "
                        "eval_token_accuracy: the stage's last teacher-forced evaluation on validation windows.")


if __name__ == "__main__":
    main()
