"""``mmcompress train --config recipe.yaml``: train a compressor with the shared trainer."""
from __future__ import annotations

import json

from .common import parse_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a compressor from a YAML recipe (configs/train/*.yaml)")
    p.add_argument("--config", "-c", required=True, help="recipe: task, model, data and train sections")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.max_steps=100 --set data.max_examples=500")
    p.add_argument("--output-dir", "-o", help="where checkpoints, log.jsonl and the final model go")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the previous run's checkpoints and log in a non-empty output dir")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import load_recipe, run_recipe

    overrides = parse_overrides(args.overrides)
    if args.output_dir:
        overrides["train.output_dir"] = args.output_dir
    if args.resume:
        overrides["train.resume"] = True
    if args.overwrite:
        overrides["train.overwrite"] = True
    result = run_recipe(load_recipe(args.config, overrides))
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 2), "last_loss": result.last_loss,
                      "steps_per_s": round(result.steps_per_second, 3), "output_dir": result.output_dir}))
    return 0
