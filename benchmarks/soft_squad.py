"""Soft compressors on SQuAD: the frozen reader answers from each row's compressed context, against the same reader
with the full context as text and with no context, on the held-out tail of ``squad_dev.jsonl`` (the last
``--qa-eval-fraction`` of rows, which the QA recipes never train on), split into ``--split validation`` (its first
half: for choices) and ``--split test`` (its second half: read once for reported numbers).

Reports EM, F1 and answer containment per condition, the share of the full context's F1 and containment that the
compressed context keeps, and a paired comparison with no context (rows where only one of the two contains the
answer, exact McNemar p).

    PYTHONPATH=. python benchmarks/soft_squad.py --compressor soft-smollm2-4x --split validation
    # settings after commas (YAML values), e.g. question-focused pooling next to uniform pooling:
    PYTHONPATH=. python benchmarks/soft_squad.py --compressor soft-smollm2-4x \
        --compressor soft-smollm2-4x,question_focus=0.5 --split validation
"""
from __future__ import annotations

import argparse

from common import add_common_args, apply_common_args, write_results


def held_out_rows(rows: list[dict], eval_fraction: float, split: str) -> list[dict]:
    """The QA recipes' held-out tail (``soft/tasks.py``: the last ``eval_fraction`` of rows), then its split."""
    from mmcompress.soft.tasks import held_out_part, qa_cut

    return held_out_part(rows[qa_cut(rows, eval_fraction):], split)


def compressor_settings(pairs: list[str]) -> dict:
    """``["question_focus=0.5", ...]`` -> ``{"question_focus": 0.5, ...}``, values read as ``--set`` reads them."""
    from mmcompress.cli.common import parse_overrides

    bad = [pair for pair in pairs if "=" not in pair or not pair.partition("=")[0].strip()]
    if bad:
        raise SystemExit(f"error: a compressor setting must be name=value, got {bad[0]!r}")
    return parse_overrides(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", action="append", required=True,
                    help="shipped name or saved folder, then optional ,setting=value pairs (repeatable)")
    ap.add_argument("--data", default="../shared/data/squad_dev.jsonl")
    ap.add_argument("--qa-eval-fraction", type=float, default=0.1, help="the held-out tail (as in the QA recipes)")
    ap.add_argument("--split", default="validation", choices=["validation", "test", "all"])
    ap.add_argument("--limit", type=int, default=0, help="first N rows of the split (0: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--own-baselines", action="store_true",
                    help="also read the full context and no context with each later compressor's own reader "
                         "(decoder adapter, template) and report each soft row against them too")
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

    def read(compressor, condition: str, setting: str | None = None) -> dict:
        kw = {"setting": setting} if setting else {}
        result = row(condition, evaluate_soft_qa(compressor, rows, batch_size=args.batch_size,
                                                 max_new_tokens=args.max_new_tokens, **kw))
        print({k: v for k, v in result.items() if k not in ("hits", "answers")}, flush=True)
        return result

    results, baselines = [], {}  # reader (name, template) -> its (no context, full context) rows
    for i, spec in enumerate(args.compressor):
        name, *settings = spec.split(",")
        settings = compressor_settings(settings)
        compressor = create_compressor(name, device="cpu", **settings)
        reader = (name, settings.get("qa_template"))  # what reads the text (question_focus does not change it)
        if i == 0 or (args.own_baselines and reader not in baselines):
            # the reader baselines: the same decoder, the context as text or absent
            suffix = "" if i == 0 else f", {name} reader"
            baselines[reader] = [read(compressor, f"{s.replace('_', ' ')}{suffix}", s)
                                 for s in ("no_context", "full_context")]
            results += baselines[reader]
        results.append(read(compressor, spec))
        results[-1]["own"] = baselines.get(reader)
    none, full = results[0], results[1]

    def paired(r: dict, none: dict) -> tuple[int, int, float]:
        won = sum(a and not b for a, b in zip(r["hits"], none["hits"]))
        lost = sum(b and not a for a, b in zip(r["hits"], none["hits"]))
        return won, lost, mcnemar_exact(won, lost)

    def shares(r: dict, full: dict, suffix: str) -> dict:
        return {f"{k}_of_{suffix}": r[k] / full[k] if full[k] else None for k in ("f1", "contains")}

    for r in results:
        r.update(shares(r, full, "full"))
        r["won_vs_no_context"], r["lost_vs_no_context"], r["mcnemar_p"] = paired(r, none)
        own = r.pop("own", None)
        if args.own_baselines and own is not None:
            own_none, own_full = own
            r.update(shares(r, own_full, "own_full"))
            r["won_vs_own_no_context"], r["lost_vs_own_no_context"], r["own_mcnemar_p"] = paired(r, own_none)
    write_results(args.out, f"Soft compressors on SQuAD ({args.split} part of the held-out tail, {len(rows)} rows)",
                  results, columns=["condition", "ratio", "exact_match", "f1", "contains", "f1_of_full",
                                    "contains_of_full", "won_vs_no_context", "lost_vs_no_context", "mcnemar_p",
                                    *(["f1_of_own_full", "contains_of_own_full", "won_vs_own_no_context",
                                       "lost_vs_own_no_context", "own_mcnemar_p"] if args.own_baselines else [])],
                  notes="Reader: the compressor's own frozen decoder, greedy, the same QA prompt in every condition. "
                        "of_full: against the first compressor's reader with the full context; of_own_full and "
                        "own_no_context (with --own-baselines): against the same compressor's reader with the full "
                        "context and with none. "
                        "won/lost: rows where only this condition's answer (or only no context's) contains a gold "
                        "answer; p: exact two-sided McNemar.")


if __name__ == "__main__":
    main()
