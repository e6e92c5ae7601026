"""Does the soft prompt carry its window? Held-out reconstruction of saved soft compressors: teacher-forced loss and
token accuracy with each window's own soft prompt ("matched") and with another window's ("mismatched": the chunks
rolled by one across the batch), and greedy regeneration scored by BLEU-4 and positional token accuracy.

A compressor whose soft prompt only acts as a learned, text-independent prefix scores the same both ways; the gap
is what the soft prompt carries. Windows are the recipe's held-out documents (the last 5% of the corpus, never
trained on), cut into windows of the compressor's own ``chunk_tokens``: ``--split validation`` (the first half of
those documents, for choices) or ``--split test`` (the second half, for the numbers reported, read once).

    PYTHONPATH=. python benchmarks/soft_slot_control.py --compressor soft-smollm2-4x --split validation
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import add_common_args, apply_common_args, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True, help="saved folder or shipped name (repeatable)")
    ap.add_argument("--text", default="../shared/data/corpus_wiki_news.txt", help="the corpus the recipes train on")
    ap.add_argument("--eval-fraction", type=float, default=0.05, help="its held-out tail (as in the recipes)")
    ap.add_argument("--split", default="validation", choices=["validation", "test", "all"],
                    help="part of the held-out tail (validation: first half of its documents; test: second half)")
    ap.add_argument("--windows", type=int, default=0, help="windows to read (0: every window of the split)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-greedy", action="store_true", help="teacher-forced numbers only")
    add_common_args(ap, "benchmarks/results/soft_slot_control")
    args = ap.parse_args()
    apply_common_args(args)

    from mmcompress import create_compressor
    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    rows = []
    for name in args.compressor:
        c = create_compressor(name, device="cpu")
        tok = c.tokenizer
        data = {**DATA_DEFAULTS, "text": args.text, "eval_fraction": args.eval_fraction,
                "eval_split": args.split, "context_tokens": c.config.chunk_tokens, "eval_examples": args.windows or 10**9}
        _, held = build_datasets(data, tok, tok.eos_token_id)
        if len(held) < args.windows:
            raise SystemExit(f"only {len(held)} held-out windows of {c.config.chunk_tokens} tokens in {args.split}")
        n = args.windows or len(held)
        module = c.module.eval()
        sums = {"matched_loss": 0.0, "matched_token_accuracy": 0.0, "mismatched_loss": 0.0,
                "mismatched_token_accuracy": 0.0}
        batches = range(0, n, args.batch_size)
        for start in batches:
            items = [held[i] for i in range(start, min(n, start + args.batch_size))]
            batch = c.training_collate()(items)
            rolled = {**batch, "chunk_ids": batch["chunk_ids"].roll(1, 0), "chunk_mask": batch["chunk_mask"].roll(1, 0)}
            with torch.no_grad():
                for key, b in (("matched", batch), ("mismatched", rolled)):
                    out = module.evaluation_step(b)
                    sums[f"{key}_loss"] += out["loss"] * len(items) / n  # windows are equal-length: a window mean
                    sums[f"{key}_token_accuracy"] += out["token_accuracy"] * len(items) / n
        row = {"compressor": str(name), "method": c.name, "window": c.config.chunk_tokens,
               "ratio": c.config.nominal_ratio, "split": args.split, "windows": n, **sums}
        if not args.no_greedy:
            texts = [tok.decode(held[i].context) for i in range(n)]
            report = evaluate_reconstruction(c, texts, batch_size=args.batch_size)
            row.update({"greedy_bleu4": report.bleu4, "greedy_token_accuracy": report.token_accuracy,
                        "achieved_ratio": report.ratio, "sample": report.outputs[0][:160],
                        "reference": texts[0][:160]})
        rows.append(row)
        print(row, flush=True)
        del c, module
    columns = ["compressor", "method", "window", "ratio", "split", "windows", "matched_token_accuracy",
               "mismatched_token_accuracy", "matched_loss", "mismatched_loss", "greedy_bleu4", "greedy_token_accuracy"]
    write_results(args.out, "Does the soft prompt carry its window? Held-out reconstruction", rows, columns=columns,
                  notes="Teacher-forced: matched = each window's own soft prompt, mismatched = the previous window's. "
                        "Greedy: regenerate each window from its soft prompt (BLEU-4, positional token accuracy).")


if __name__ == "__main__":
    main()
