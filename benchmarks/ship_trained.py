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
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from common import machine_stamp
from soft_reconstruction_curve import command

PACKAGE = Path(__file__).resolve().parent.parent / "mmcompress" / "trained"


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
    if stages:
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
