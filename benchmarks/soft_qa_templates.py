"""Which question template lets the soft compressors' reader answer from a context? The frozen reader (the
compressor's own decoder) answers the held-out SQuAD rows with the full context as text and with no context, once per
template; a template is useful when the full context separates from no context. Validation rows only: this chooses
the ``qa_template`` of the QA recipes.

    PYTHONPATH=. python benchmarks/soft_qa_templates.py --compressor soft-smollm2-4x-qa --split validation
"""
from __future__ import annotations

import argparse

from common import add_common_args, apply_common_args, write_results
from soft_squad import held_out_rows

# the recipe names (plain, chatml) and two variants that were tried beside them
CANDIDATES = {
    "plain": "plain",
    "plain, 'according to the text above'": "\nAccording to the text above, {question}\nShort answer:",
    "chatml": "chatml",
    "chatml, instruction first": ("<|im_start|>user\nRead the text above and answer the question in a few words.\n"
                                  "Question: {question}<|im_end|>\n<|im_start|>assistant\n"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", default="soft-smollm2-4x-qa", help="shipped name or saved folder (its reader)")
    ap.add_argument("--data", default="../shared/data/squad_dev.jsonl")
    ap.add_argument("--split", default="validation", choices=["validation"], help="choices are made on validation")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    add_common_args(ap, "benchmarks/results/soft_qa_templates")
    args = ap.parse_args()
    apply_common_args(args)

    from mmcompress import create_compressor
    from mmcompress.data_paths import resolve_data_path
    from mmcompress.evaluation.metrics import mcnemar_exact
    from mmcompress.evaluation.soft_qa import evaluate_soft_qa
    from mmcompress.soft.losses import read_jsonl
    from mmcompress.soft.tasks import qa_template

    rows = held_out_rows(read_jsonl(resolve_data_path(args.data)), 0.1, args.split)
    compressor = create_compressor(args.compressor, device="cpu")
    results = []
    for name, spec in CANDIDATES.items():
        compressor.config.qa_template = qa_template(spec)
        full, none = (evaluate_soft_qa(compressor, rows, batch_size=args.batch_size,
                                       max_new_tokens=args.max_new_tokens, setting=s)
                      for s in ("full_context", "no_context"))
        won = sum(a and not b for a, b in zip(full.contains_per_row, none.contains_per_row))
        lost = sum(b and not a for a, b in zip(full.contains_per_row, none.contains_per_row))
        results.append({"template": name, "rows": len(rows), "full_f1": full.f1, "full_contains": full.contains,
                        "none_f1": none.f1, "none_contains": none.contains, "full_won_vs_none": won,
                        "full_lost_vs_none": lost, "mcnemar_p": mcnemar_exact(won, lost)})
        print(results[-1], flush=True)
    write_results(args.out, f"Reader question templates on SQuAD ({args.split} rows of the held-out tail)", results,
                  notes=f"Reader: the frozen decoder of {args.compressor}, greedy, {args.max_new_tokens} new tokens; "
                        "full = the context as text before the question, none = the question alone. won/lost: rows "
                        "where only the full context's answer (or only no context's) contains a gold answer.",
                  extra={"templates": {k: qa_template(v) for k, v in CANDIDATES.items()}})


if __name__ == "__main__":
    main()
