"""Does a shipped recipe, run end to end as one command, give the weights that ship? Compares the trained tensors of
two saved compressors (the recipe's result and the shipped copy, or the run the copy came from) and, stage by
stage, the losses the two runs logged.

    mmcompress train --config soft-smollm2-4x-qa                      # runs/soft-smollm2-4x-qa (about 87 minutes)
    PYTHONPATH=. python benchmarks/recipe_reproduction.py --recipe soft-smollm2-4x-qa \\
        --result runs/soft-smollm2-4x-qa/final --reference runs/spans-qa-focus-more/final \\
        --reference-log benchmarks/results/soft_spans_train_log.jsonl \\
        --reference-log benchmarks/results/soft_spans_qa_focus_train_log.jsonl \\
        --reference-log benchmarks/results/soft_spans_qa_focus_more_train_log.jsonl \\
        --out benchmarks/results/soft_qa_recipe_reproduction
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def read_log(path: Path) -> dict[int, float]:
    """step -> training loss of a trainer's ``log.jsonl``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from mmcompress.soft.base import WEIGHTS_FILE
    from mmcompress.training.tasks import load_recipe, stage_names, stage_recipes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="the shipped staged recipe that was run (name or path)")
    ap.add_argument("--result", required=True, help="the recipe's saved result (<output_dir>/final)")
    ap.add_argument("--reference", required=True, help="the saved compressor it should reproduce")
    ap.add_argument("--reference-log", action="append", default=[], help="the reference's log of each stage, in order")
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md results")
    args = ap.parse_args()

    recipe = load_recipe(args.recipe)
    stages = stage_recipes(recipe)
    if args.reference_log and len(args.reference_log) != len(stages):
        raise SystemExit(f"error: {args.recipe} has {len(stages)} stages; got {len(args.reference_log)} --reference-log")
    rows = []
    for stage, name, reference in zip(stages, stage_names(recipe), args.reference_log):
        ours, theirs = (read_log(Path(stage["train"]["output_dir"]) / "log.jsonl"), read_log(Path(reference)))
        common_steps = sorted(set(ours) & set(theirs))
        rows.append({"what": f"stage {name}: logged training loss", "compared": len(common_steps),
                     "identical": sum(ours[s] == theirs[s] for s in common_steps),
                     "max_abs_difference": max((abs(ours[s] - theirs[s]) for s in common_steps), default=None)})
    result = load_file(str(Path(args.result) / WEIGHTS_FILE))
    reference = load_file(str(Path(args.reference) / WEIGHTS_FILE))
    if set(result) != set(reference):
        raise SystemExit(f"error: the two folders hold different tensors ({len(set(result) ^ set(reference))} differ)")
    differences = [(result[k].float() - reference[k].float()).abs().max().item() for k in sorted(result)]
    rows.append({"what": "trained tensors", "compared": len(result),
                 "identical": sum(torch.equal(result[k], reference[k]) for k in result),
                 "max_abs_difference": max(differences)})
    for row in rows:
        print(row)
    write_results(args.out, f"Reproduction of {args.recipe} end to end: {args.result} against {args.reference}", rows,
                  notes="compared: logged steps (or tensors) present in both; identical: bit for bit.")


if __name__ == "__main__":
    main()
