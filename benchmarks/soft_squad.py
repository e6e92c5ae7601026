"""Soft compressors on SQuAD: the frozen reader answers from each row's compressed context, against the same reader
with the full context as text and with no context, on the held-out tail of ``squad_dev.jsonl`` (the last
``--qa-eval-fraction`` of rows, which the QA recipes never train on), split into ``--split validation`` (its first
half: for choices) and ``--split test`` (its second half: read once for reported numbers).

Reports EM, F1 and answer containment per condition, the share of the full context's F1 and containment that the
compressed context keeps, and a paired comparison with no context (rows where only one of the two contains the
answer, exact McNemar p).

    PYTHONPATH=. python benchmarks/soft_squad.py --compressor soft-smollm2-4x --split validation
"""
from __future__ import annotations

import argparse

from common import add_common_args, apply_common_args, write_results


def held_out_rows(rows: list[dict], eval_fraction: float, split: str) -> list[dict]:
    """The QA recipes' held-out tail (``soft/tasks.py``: the last ``eval_fraction`` of rows), then its split."""
    from mmcompress.soft.tasks import held_out_part, qa_cut

    return held_out_part(rows[qa_cut(rows, eval_fraction):], split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True, help="shipped name or saved folder (repeatable)")
    ap.add_argument("--data", default="../shared/data/squad_dev.jsonl")
    ap.add_argument("--qa-eval-fraction", type=float, default=0.1, help="the held-out tail (as in the QA recipes)")
    ap.add_argument("--split", default="validation", choices=["validation", "test", "all"])
    ap.add_argument("--limit", type=int, default=0, help="first N rows of the split (0: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    add_common_args(ap, "benchmarks/results/soft_squad")
    args = ap.parse_args()
    apply_common_args(args)

    from mmcompress import create_compressor
    from mmcompress.data_paths import resolve_data_path
    from mmcompress.evaluation.metrics import mcnemar_exact
    from mmcompress.evaluation.soft_qa import evaluate_soft_qa
    from mmcompress.soft.losses import read_jsonl

    rows = held_out_rows(read_jsonl(resolve_data_path(args.data)), args.qa_eval_fraction, args.split)
    rows = rows[: args.limit or None]

    def row(name: str, report) -> dict:
        return {"condition": name, "method": report.method, "questions": report.questions,
                "ratio": report.ratio, "exact_match": report.exact_match, "f1": report.f1,
                "contains": report.contains, "hits": report.contains_per_row, "answers": report.answers}

    results = []
    for i, spec in enumerate(args.compressor):
        compressor = create_compressor(spec, device="cpu")
        if i == 0:  # the reader baselines: the same frozen decoder, the context as text or absent
            for setting in ("no_context", "full_context"):
                results.append(row(setting.replace("_", " "), evaluate_soft_qa(
                    compressor, rows, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, setting=setting)))
                print({k: v for k, v in results[-1].items() if k not in ("hits", "answers")}, flush=True)
        results.append(row(spec, evaluate_soft_qa(compressor, rows, batch_size=args.batch_size,
                                                  max_new_tokens=args.max_new_tokens)))
        print({k: v for k, v in results[-1].items() if k not in ("hits", "answers")}, flush=True)
    none, full = results[0], results[1]
    for r in results:
        r["f1_of_full"] = r["f1"] / full["f1"] if full["f1"] else None
        r["contains_of_full"] = r["contains"] / full["contains"] if full["contains"] else None
        won = sum(a and not b for a, b in zip(r["hits"], none["hits"]))
        lost = sum(b and not a for a, b in zip(r["hits"], none["hits"]))
        r.update({"won_vs_no_context": won, "lost_vs_no_context": lost, "mcnemar_p": mcnemar_exact(won, lost)})
    write_results(args.out, f"Soft compressors on SQuAD ({args.split} part of the held-out tail, {len(rows)} rows)",
                  results, columns=["condition", "ratio", "exact_match", "f1", "contains", "f1_of_full",
                                    "contains_of_full", "won_vs_no_context", "lost_vs_no_context", "mcnemar_p"],
                  notes="Reader: the compressor's own frozen decoder, greedy, the same QA prompt in every condition. "
                        "won/lost: rows where only this condition's answer (or only no context's) contains a gold "
                        "answer; p: exact two-sided McNemar.")


if __name__ == "__main__":
    main()
