"""Ship a trained soft compressor inside the package: copy its saved folder to ``mmcompress/trained/<name>/`` with
the trained tensors stored in bfloat16 (half the size; they are loaded into the adapter's own float32 parameters),
and write its card (``TRAINED.json``: method, ratio, base model, training, held-out numbers with the command that
measured them, machine), which ``mmcompress list`` shows.

    PYTHONPATH=. python benchmarks/ship_trained.py --source runs/main/meanpool-final --name soft-smollm2-4x \\
        --training benchmarks/results/soft_design/meanpool.json \\
        --training benchmarks/results/soft_design/meanpool_continued.json
    PYTHONPATH=. python benchmarks/soft_slot_control.py --compressor soft-smollm2-4x \\
        --split test --out benchmarks/results/soft_test_4x
    PYTHONPATH=. python benchmarks/ship_trained.py ... --heldout benchmarks/results/soft_test_4x.json  # the card

Weights trained by a shipped staged recipe give each stage's trainer log instead of ``--training``:
``--recipe soft-smollm2-4x-qa --stage-log LOG1 --stage-log LOG2 ...`` (steps, wall time, held-out evaluation).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from common import describe_machine, machine_stamp
from soft_reconstruction_curve import command

PACKAGE = Path(__file__).resolve().parent.parent / "mmcompress" / "trained"


def stage_machines(log: Path) -> list[str] | None:
    """The machines the trainer stamped for a run (``machines.jsonl`` beside ``log.jsonl``, or ``X_machines.jsonl``
    beside a committed copy ``X_train_log.jsonl``), one line per piece; None for runs from before the stamp."""
    beside = log.with_name("machines.jsonl" if log.name == "log.jsonl" else log.name.replace("_train_log", "_machines"))
    if beside == log or not beside.is_file():
        return None
    pieces = [json.loads(line) for line in beside.read_text().splitlines() if line.strip()]
    return [f"from step {p['start_step']}: {describe_machine(p['machine'])}" for p in pieces]


def recipe_training(recipe_name: str | None, logs: list[str]) -> dict:
    """The card's training entry for weights trained by a shipped staged recipe (``mmcompress train``): per stage,
    its steps and batch from the recipe, its wall-clock seconds (summed from the log's steps per second, evaluation
    excluded) and its last held-out evaluation, from the trainer's committed ``log.jsonl``."""
    from mmcompress.training.tasks import load_recipe, stage_names, stage_recipes

    if recipe_name is None:
        raise SystemExit("error: --stage-log needs --recipe (the shipped staged recipe the logs come from)")
    recipe = load_recipe(recipe_name)
    stages, names = stage_recipes(recipe), stage_names(recipe)
    if len(logs) != len(stages):
        raise SystemExit(f"error: {recipe_name} has {len(stages)} stages; got {len(logs)} --stage-log")
    out = []
    for stage, name, path in zip(stages, names, logs):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "steps_per_s" in r]
        evals = [r for r in rows if "eval/token_accuracy" in r]
        if not steps or steps[-1]["step"] != stage["train"]["max_steps"]:
            raise SystemExit(f"error: {path} does not end at stage {name!r}'s {stage['train']['max_steps']} steps")
        seconds = sum((b["step"] - a) / b["steps_per_s"] for a, b in zip([0] + [r["step"] for r in steps], steps))
        out.append({"stage": name, "steps": steps[-1]["step"], "batch_size": stage["train"]["batch_size"],
                    "train_wall_seconds": round(seconds, 1),
                    "eval_token_accuracy": round(evals[-1]["eval/token_accuracy"], 4) if evals else None,
                    "log": path, "machines": stage_machines(Path(path))})
    return {"recipe": recipe_name, "init_from": stages[0].get("init_from"), "stages": out,
            "steps": sum(s["steps"] for s in out),
            "train_wall_minutes": round(sum(s["train_wall_seconds"] for s in out) / 60, 1),
            "command": f"mmcompress train --config {recipe_name} --resume"}


def main() -> None:
    from safetensors.torch import load_file, save_file

    from mmcompress import create_compressor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="a saved compressor folder (save_pretrained)")
    ap.add_argument("--name", required=True, help="the name it loads by, e.g. soft-smollm2-4x")
    ap.add_argument("--heldout", default=None, help="results JSON of benchmarks/soft_slot_control.py on the shipped name")
    ap.add_argument("--squad", default=None, help="results JSON of benchmarks/soft_squad.py on the shipped name")
    ap.add_argument("--recipe", default=None, help="the shipped recipe that runs the whole schedule (name)")
    ap.add_argument("--training", action="append", default=[],
                    help="results JSON of each training stage's curve, in order (steps, CPU time, command)")
    ap.add_argument("--stage-log", action="append", default=[],
                    help="the trainer's log.jsonl of each stage of --recipe, in order (steps, wall time, eval)")
    args = ap.parse_args()

    source, target = Path(args.source), PACKAGE / args.name
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(source / "mmcompress_config.json", tmp / "mmcompress_config.json")
    weights = load_file(str(source / "trainable.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
    meta = json.loads((source / "mmcompress_config.json").read_text())
    config = meta.get("config", {})
    card = {"name": args.name, "method": meta["compressor"], "base_model": config.get("model"),
            "ratio": config["chunk_tokens"] / config["num_slots"], "window": config["chunk_tokens"],
            "trained_parameters": sum(v.numel() for v in weights.values()), "shipped_from": str(source),
            "shipped_on": machine_stamp()}
    if args.heldout:  # measured on the shipped copy by name (so its bfloat16 weights are what was measured)
        heldout = json.loads(Path(args.heldout).read_text())
        row = next(r for r in heldout["rows"] if r["compressor"] == args.name)
        card["heldout"] = {"tf_token_accuracy": round(row["matched_token_accuracy"], 4),
                           "tf_token_accuracy_mismatched": round(row["mismatched_token_accuracy"], 4),
                           "greedy_bleu4": round(row["greedy_bleu4"], 4), "windows": row["windows"],
                           "split": row.get("split", "validation")}
        card["heldout_command"] = heldout["command"]
    if args.squad:  # QA on held-out SQuAD rows, next to the same reader with the full context and with none
        squad = json.loads(Path(args.squad).read_text())
        row = next(r for r in squad["rows"] if r["condition"] == args.name)
        card["squad"] = {k: round(row[k], 4) if isinstance(row[k], float) else row[k]
                         for k in ("questions", "f1", "contains", "f1_of_full", "contains_of_full",
                                   "won_vs_no_context", "lost_vs_no_context", "mcnemar_p")}
        card["squad_command"] = squad["command"]
    stages = []
    for path in args.training:
        training = json.loads(Path(path).read_text())
        last = training["curve"][-1]
        stages.append({"steps": last["step"], "batch_size": training["args"]["batch_size"],
                       "train_cpu_seconds": last.get("train_cpu_seconds"), "machine": training["machine"],
                       "command": training.get("command") or command(argparse.Namespace(**{
                           "decoder_lora_r": 0, "ratio": 4, "out": None, **training["args"]})),
                       "results": path})
    if args.stage_log:
        card["training"] = recipe_training(args.recipe, args.stage_log)
    elif stages:
        card["training"] = {"stages": stages, "steps": sum(s["steps"] for s in stages),
                            "train_cpu_minutes": round(sum(s["train_cpu_seconds"] or 0 for s in stages) / 60, 1)}
    if args.recipe:
        card["recipe"] = args.recipe
    (tmp / "TRAINED.json").write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    loaded = create_compressor(args.name, device="cpu")  # the shipped copy loads by name and regenerates
    print(loaded.reconstruct(loaded.compress("The quick brown fox jumps over the lazy dog."), max_new_tokens=16))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
