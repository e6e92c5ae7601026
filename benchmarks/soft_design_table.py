"""One table from the soft design comparison: design x CPU minutes x held-out teacher-forced token accuracy x greedy
BLEU-4, read from the reconstruction curves in ``benchmarks/results/soft_design/`` (each run by
``benchmarks/soft_reconstruction_curve.py`` with the same data, batch, learning rate and window; its command is in its
own file). Rows are compared at the same training step, whose CPU time each curve records.

    PYTHONPATH=. python benchmarks/soft_design_table.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import markdown_table
from soft_reconstruction_curve import command

DESIGNS = {"meanpool": "mean-pooling of per-layer keys/values (meanpool)", "kv": "per-layer key/value slots (kv)",
           "icae": "ICAE memory slots (icae)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="benchmarks/results/soft_design")
    args = ap.parse_args()
    folder = Path(args.folder)
    curves = {m: json.loads((folder / f"{m}.json").read_text()) for m in DESIGNS if (folder / f"{m}.json").exists()}
    steps = sorted(set.intersection(*[{p["step"] for p in c["curve"]} for c in curves.values()]))
    rows = []
    for step in steps:
        for method, curve in curves.items():
            point = next(p for p in curve["curve"] if p["step"] == step)
            rows.append({"design": DESIGNS[method], "step": step, "examples": point["examples_seen"],
                         "CPU minutes": round(point.get("train_cpu_seconds", 0.0) / 60, 1),
                         "held-out TF token acc.": round(point["heldout_tf_token_accuracy"], 3),
                         "greedy BLEU-4": round(point["bleu4"], 3)})
    first = next(iter(curves.values()))
    lines = ["# Soft design comparison at 4x (same data, batch, learning rate and window)", "",
             f"Machine: {first['machine']}.", "",
             "Commands:", "", *[f"- `{c.get('command') or command(argparse.Namespace(**{'decoder_lora_r': 0, **c['args']}))}`"
                                for c in curves.values()], "",
             markdown_table(rows), ""]
    (folder / "table.md").write_text("\n".join(lines))
    (folder / "table.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
