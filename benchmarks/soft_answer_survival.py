"""Does the answer survive compression? Each SQuAD context is compressed (question-agnostic, as ``soft-smollm2-4x``
compresses a document) and regenerated from its soft prompt (``reconstruct``, each chunk from its own soft tokens);
the share of rows whose regenerated context still contains a gold answer is an upper bound on what a reader of that
soft prompt can answer by copying, and it separates "the pooled context lost the answer" from "the reader cannot
find it there".

Rows: ``--split validation`` / ``test`` are the QA recipes' held-out tail (as ``soft_squad.py``); ``--split train``
is the rows before that tail, which the autoencoding-only compressors never read (the QA stages train on them, so
they do not measure a compressor with a QA stage). Answers are split by kind: ``number`` (a digit in it), ``name``
(a capitalised word in it) and ``other``. BLEU-4 of the regenerated contexts against the contexts is reported too.

    PYTHONPATH=. python benchmarks/soft_answer_survival.py --compressor soft-smollm2-4x --split train --limit 200
"""
from __future__ import annotations

import argparse
import re

from common import add_common_args, apply_common_args, write_results
from soft_squad import held_out_rows

KINDS = ("number", "name", "other")


def answer_kind(answer: str) -> str:
    if re.search(r"\d", answer):
        return "number"
    return "name" if re.search(r"\b[A-Z]", answer) else "other"


def rows_of(rows: list[dict], eval_fraction: float, split: str) -> list[dict]:
    """The QA recipes' training rows, or a split of their held-out tail (as ``soft_squad.py``)."""
    from mmcompress.soft.tasks import qa_cut

    return rows[: qa_cut(rows, eval_fraction)] if split == "train" else held_out_rows(rows, eval_fraction, split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True, help="shipped name or saved folder (repeatable)")
    ap.add_argument("--data", default="../shared/data/squad_dev.jsonl")
    ap.add_argument("--qa-eval-fraction", type=float, default=0.1, help="the held-out tail (as in the QA recipes)")
    ap.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    ap.add_argument("--limit", type=int, default=0, help="first N rows of the split (0: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    add_common_args(ap, "benchmarks/results/soft_answer_survival")
    args = ap.parse_args()
    if args.limit < 0:
        raise SystemExit("error: --limit must be >= 0")
    apply_common_args(args)

    from mmcompress import create_compressor
    from mmcompress.data_paths import resolve_data_path
    from mmcompress.evaluation.metrics import contains_answer, mcnemar_exact
    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    from mmcompress.soft.losses import read_jsonl

    rows = rows_of(read_jsonl(resolve_data_path(args.data)), args.qa_eval_fraction, args.split)[: args.limit or None]
    contexts = [r["context"] for r in rows]
    golds = [[a for a in r["answers"] if a.strip()] for r in rows]
    kinds = [answer_kind(g[0]) for g in golds]
    in_context = [contains_answer(c, g) for c, g in zip(contexts, golds)]  # SQuAD answers are spans: ~1 by design

    results = []
    for spec in args.compressor:
        c = create_compressor(spec, device="cpu")
        c.module.eval()
        report = evaluate_reconstruction(c, contexts, batch_size=args.batch_size)
        hits = [contains_answer(o, g) for o, g in zip(report.outputs, golds)]
        row = {"compressor": str(spec), "split": args.split, "rows": len(rows), "ratio": round(report.ratio, 2),
               "answer_in_context": sum(in_context) / len(rows), "answer_survives": sum(hits) / len(rows),
               "context_bleu4": round(report.bleu4, 4), "seconds": round(report.seconds, 1), "hits": hits}
        for kind in KINDS:
            picked = [h for h, k in zip(hits, kinds) if k == kind]
            row[f"survives_{kind}"] = sum(picked) / len(picked) if picked else None
            row[f"rows_{kind}"] = len(picked)
        row["lost_samples"] = [{"answer": g[0], "regenerated": o[:300]}
                               for h, g, o in zip(hits, golds, report.outputs) if not h][:5]
        if results:  # paired with the first compressor: rows where only one of the two keeps the answer
            first = results[0]["hits"]
            won, lost = (sum(bool(a and not b) for a, b in zip(x, y)) for x, y in ((hits, first), (first, hits)))
            row.update({"won_vs_first": won, "lost_vs_first": lost, "mcnemar_p": mcnemar_exact(won, lost)})
        results.append(row)
        print({k: v for k, v in row.items() if k not in ("hits", "lost_samples")}, flush=True)
        del c
    write_results(args.out, f"Answer survival: SQuAD contexts regenerated from their soft prompts ({args.split}, "
                            f"{len(rows)} rows)", results,
                  columns=["compressor", "split", "rows", "ratio", "answer_in_context", "answer_survives",
                           "survives_number", "rows_number", "survives_name", "rows_name", "survives_other",
                           "rows_other", "won_vs_first", "lost_vs_first", "mcnemar_p", "context_bleu4", "seconds"],
                  notes="Each context compressed without its question and regenerated greedily (reconstruct, each "
                        "chunk from its own soft tokens); answer_survives: the regenerated context contains a gold "
                        "answer (SQuAD-normalised), an upper bound on answering by copying from that soft prompt. "
                        "Kinds by the first gold answer: number (has a digit), name (a capitalised word), other. "
                        "won/lost: rows where only this compressor's (or only the first one's) regenerated context "
                        "keeps the answer; p: exact two-sided McNemar.")


if __name__ == "__main__":
    main()
