"""Padded positions the document ranking feeds, at the old and new ``max_pad_waste`` (tokenizer only, seconds).

    PYTHONPATH=. python benchmarks/ranking_padding.py [--rows 3]

For each of the first ``--rows`` prompts of ``../shared/data/multidoc_qa_dev.jsonl`` (the prompts of
``hard_speed.py``), the documents' SmolLM2 token counts go through ``CausalLMScorer``'s batching
(``_length_batches``, 8,192 tokens a batch, as LLMLingua's ranking) at each padding allowance; a padded position
costs a CPU as much as a real one. Writes benchmarks/results/ranking_padding.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from common import add_common_args, apply_common_args, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from llmlingua_peer import SHARED  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
WASTES = (0.2, 0.05, 0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3)
    add_common_args(ap, str(REPO / "benchmarks" / "results" / "ranking_padding"))
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    apply_common_args(args)
    from mmcompress.models import load_tokenizer
    from mmcompress.scoring.causal_lm import _length_batches

    tokenizer = load_tokenizer("smollm2-135m")
    rows = [json.loads(line) for line in DATA.open()][: args.rows]
    table = []
    for r in rows:
        lengths = [len(ids) for ids in tokenizer(r["documents"], add_special_tokens=True)["input_ids"]]
        row = {"id": r["id"], "documents": len(lengths), "document tokens": sum(lengths)}
        for waste in WASTES:
            batches = _length_batches(lengths, 8192, waste)
            fed = sum(max(lengths[i] for i in b) * len(b) for b in batches)
            row[f"fed at {waste:g}"] = fed
            row[f"batches at {waste:g}"] = len(batches)
            row[f"padding share at {waste:g}"] = round(1 - sum(lengths) / fed, 4)
        table.append(row)
        print(json.dumps(row))
    write_results(args.out, "Document ranking: positions fed per padding allowance (max_pad_waste)", table,
                  notes="SmolLM2 tokens of each prompt's documents, batched by CausalLMScorer's _length_batches "
                        "(8,192 tokens a batch). 0.2 was the allowance before; 0.05 is the CPU default now.")
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
