"""Do the slots carry the text? Teacher-forced reconstruction loss / token accuracy of a saved icae / kv compressor
on held-out windows, with each window's own soft prompt ("matched") and with the soft prompt of another window
("mismatched": the chunks rolled by one across the batch). A compressor whose slots only act as a learned,
text-independent prefix (prefix tuning for the domain) scores the same both ways; the gap is what the slots carry.

    PYTHONPATH=. python benchmarks/soft_slot_control.py --compressor /work/runs/soft/icae --compressor /work/runs/soft/kv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True, help="saved compressor folder (repeatable)")
    ap.add_argument("--recipe", default="configs/train/icae-pretrain.yaml", help="its data section gives the held-out text")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/soft_slot_control")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mmcompress import create_compressor
    from mmcompress.soft.losses import collate
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets
    from mmcompress.training import load_recipe

    data = {**DATA_DEFAULTS, **load_recipe(args.recipe)["data"]}
    rows = []
    for path in args.compressor:
        c = create_compressor(path, device="cpu", dtype="float32")
        tok = c.tokenizer
        _, held = build_datasets(data, tok, tok.eos_token_id)
        batch = collate([held[i] for i in range(args.windows)], c.config.chunk_tokens, tok.pad_token_id)
        if int(batch["chunk_span"].max()) != args.windows - 1 or len(batch["chunk_span"]) != args.windows:
            raise SystemExit("expected one chunk per window")
        rolled = {**batch, "chunk_ids": batch["chunk_ids"].roll(1, 0), "chunk_mask": batch["chunk_mask"].roll(1, 0)}
        module = c.module.eval()
        with torch.no_grad():
            matched, mismatched = module.evaluation_step(batch), module.evaluation_step(rolled)
        trained = Path(path) / "TRAINED.json"
        rows.append({"compressor": path, "method": c.name,
                     "trained": json.loads(trained.read_text()) if trained.exists() else None,
                     "matched_loss": matched["loss"], "matched_token_accuracy": matched["token_accuracy"],
                     "mismatched_loss": mismatched["loss"], "mismatched_token_accuracy": mismatched["token_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
        del c, module
    command = "PYTHONPATH=. python benchmarks/soft_slot_control.py " + " ".join(f"--compressor {p}" for p in args.compressor)
    machine = machine_line()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine, "windows": args.windows,
                                                    "rows": rows}, indent=2) + "\n")
    lines = [f"# Do the slots carry the text? ({args.windows} held-out windows of 128 tokens, teacher-forced)", "",
             f"Machine: {machine}. Command: `{command}`", "",
             "| compressor | trained steps | loss matched | loss mismatched | token acc. matched | token acc. mismatched |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = r["trained"]["step"] if r["trained"] else "-"
        lines.append(f"| {r['method']} ({r['compressor']}) | {steps} | {r['matched_loss']:.3f} | {r['mismatched_loss']:.3f} | "
                     f"{r['matched_token_accuracy']:.3f} | {r['mismatched_token_accuracy']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
