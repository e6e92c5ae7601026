"""xRAG reconstruction: regenerate held-out passages from their one token (BLEU-4, token accuracy).

The passages are the held-out documents of the paraphrase recipe's split (``paraphrase_split``), so none was
trained on. Each is compressed to ``num_slots`` token(s) and regenerated with xRAG's first paraphrase instruction
(``XRAG.reconstruct``), then scored by :func:`mmcompress.evaluation.reconstruction.evaluate_reconstruction`.

    PYTHONPATH=. python benchmarks/xrag_reconstruction.py --compressor runs/xrag-paraphrase/final --limit 32

Writes ``benchmarks/results/xrag_reconstruction.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from mmcompress import create_compressor
from mmcompress.evaluation.reconstruction import evaluate_reconstruction
from mmcompress.soft.xrag_task import paraphrase_split
from xrag_squad import training_info  # the script's folder is on sys.path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compressor", required=True, help="a saved xrag folder")
    parser.add_argument("--data", default="../shared/data/corpus_wiki_news.txt")
    parser.add_argument("--passage-words", type=int, default=48)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/xrag_reconstruction")
    args = parser.parse_args(argv)

    _, held = paraphrase_split(args.data, args.passage_words, args.eval_fraction, args.seed)
    passages = held[: args.limit]
    xrag = create_compressor(args.compressor)
    report = evaluate_reconstruction(xrag, passages, batch_size=args.batch_size)
    print(f"{len(passages)} held-out passages: BLEU-4 {report.bleu4:.4f}, token accuracy {report.token_accuracy:.4f}, "
          f"{report.origin_tokens} -> {report.compressed_tokens} tokens ({report.seconds:.0f} s)")
    out = {"benchmark": "xrag_reconstruction", "command": "PYTHONPATH=. python " + shlex.join(sys.argv),
           "machine": machine_line(),
           "reader_dtype": xrag.config.dtype, "training": training_info(Path(args.compressor)),
           **report.to_dict(samples=3)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    samples = "\n".join(f"- reference: {r[:160]}...\n  output: {o[:160]}" for r, o in
                        zip(out["references"], out["outputs"]))
    path.with_suffix(".md").write_text(
        f"# xRAG reconstruction ({report.texts} held-out passages)\n\nMachine: {out['machine']}\n\n"
        f"Command: `{out['command']}`\n\n| BLEU-4 | token accuracy | tokens in | soft tokens | seconds |\n"
        f"|---:|---:|---:|---:|---:|\n| {report.bleu4:.4f} | {report.token_accuracy:.4f} | {report.origin_tokens} | "
        f"{report.compressed_tokens} | {report.seconds:.0f} |\n\n{samples}\n")
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
