"""Reconstruction of spans longer than one encoder chunk: each chunk decoded on its own (``reconstruct``'s default,
``per_chunk``) against the whole span decoded at once (``per_chunk=False``), on the shipped soft compressors.

The shipped compressors were trained on single windows of ``chunk_tokens`` tokens, one chunk per example; a longer
text is cut into several chunks, each encoded on its own. This measures what a user gets back from a document of a
few chunks. Spans are the recipe's held-out documents (the last 5% of the corpus, never trained on) cut into
windows of ``N x chunk_tokens`` tokens: ``--split validation`` (for choosing the default) or ``--split test``
(the numbers reported). Scored as in ``evaluate_reconstruction``: corpus BLEU-4 and positional token accuracy.

    PYTHONPATH=. python benchmarks/soft_long_reconstruction.py --compressor soft-smollm2-4x --chunks 1,4 --split validation
"""
from __future__ import annotations

import argparse

from common import add_common_args, apply_common_args, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True, help="saved folder or shipped name (repeatable)")
    ap.add_argument("--text", default="../shared/data/corpus_wiki_news.txt", help="the corpus the recipes train on")
    ap.add_argument("--eval-fraction", type=float, default=0.05, help="its held-out tail (as in the recipes)")
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--chunks", default="1,4", help="span lengths in encoder chunks (comma-separated)")
    ap.add_argument("--spans", type=int, default=16, help="spans per length (at most)")
    ap.add_argument("--batch-size", type=int, default=8)
    add_common_args(ap, "benchmarks/results/soft_long_reconstruction")
    args = ap.parse_args()
    lengths = [int(n) for n in args.chunks.split(",") if n]
    if not lengths or min(lengths) < 1 or args.spans < 1:
        raise SystemExit("error: --chunks takes positive integers and --spans must be >= 1")
    apply_common_args(args)

    from mmcompress import create_compressor
    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    from mmcompress.soft.tasks import documents, held_out_part, split_documents, windows

    rows = []
    for name in args.compressor:
        c = create_compressor(name, device="cpu")
        c.module.eval()
        tok = c.tokenizer
        _, held = split_documents(documents(args.text), args.eval_fraction)
        docs = held_out_part(held, args.split)
        for n in lengths:
            size = n * c.config.chunk_tokens
            texts = [tok.decode(w) for w in windows(docs, tok, size)[: args.spans]]
            if not texts:
                raise SystemExit(f"no held-out window of {size} tokens in {args.split}")
            for per_chunk in ([True, False] if n > 1 else [True]):  # one chunk: both modes are the same
                report = evaluate_reconstruction(c, texts, batch_size=args.batch_size,
                                                 reconstruct_options={"per_chunk": per_chunk})
                row = {"compressor": str(name), "ratio": c.config.nominal_ratio, "split": args.split,
                       "span_tokens": size, "chunks": n, "spans": len(texts),
                       "decoding": "each chunk alone" if per_chunk else "whole span at once",
                       "greedy_bleu4": round(report.bleu4, 4), "greedy_token_accuracy": round(report.token_accuracy, 4),
                       "seconds": round(report.seconds, 1), "sample": report.outputs[0][:200],
                       "reference": texts[0][:200]}
                rows.append(row)
                print({k: v for k, v in row.items() if k not in ("sample", "reference")}, flush=True)
        del c
    columns = ["compressor", "ratio", "split", "span_tokens", "chunks", "spans", "decoding", "greedy_bleu4",
               "greedy_token_accuracy", "seconds"]
    write_results(args.out, "Reconstruction of spans longer than one chunk: each chunk alone vs the whole span",
                  rows, columns=columns,
                  notes="Greedy regeneration from the soft prompt ([AE] task). 'each chunk alone': reconstruct()'s "
                        "default, every encoder chunk decoded from its own soft tokens (keys rotated back to position "
                        "0) and the texts joined; 'whole span at once': per_chunk=False, the decoder reads all chunks' "
                        "soft tokens together. Seconds: compress + regenerate, wall clock.")


if __name__ == "__main__":
    main()
