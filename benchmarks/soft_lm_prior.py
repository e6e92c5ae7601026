"""The frozen LLM's own next-token loss / accuracy on the held-out windows of the soft reconstruction curve: the
bar a soft compressor's teacher-forced reconstruction must clear before its slots carry anything the decoder could
not guess from the text it has already read.

    PYTHONPATH=. python benchmarks/soft_lm_prior.py --windows 8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipe", default="configs/train/icae-pretrain.yaml")
    ap.add_argument("--windows", type=int, default=8, help="first held-out windows (the curve's teacher-forced set)")
    ap.add_argument("--out", default="benchmarks/results/soft_lm_prior.json")
    args = ap.parse_args()

    from mmcompress.models.loading import load_language_model
    from mmcompress.soft.tasks import held_out_windows
    from mmcompress.training import load_recipe

    lm = load_language_model(args.model, "cpu", "float32")
    ids = torch.tensor(held_out_windows(load_recipe(args.recipe), lm.tokenizer)[: args.windows])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[:, :-1].float()
    gold = ids[:, 1:]
    result = {"model": args.model, "windows": len(ids), "tokens_per_window": ids.shape[1],
              "next_token_loss": float(F.cross_entropy(logits.flatten(0, 1), gold.flatten())),
              "next_token_accuracy": float((logits.argmax(-1) == gold).float().mean()),
              "command": f"PYTHONPATH=. python benchmarks/soft_lm_prior.py --windows {args.windows}"}
    result["machine"] = machine_line()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
