"""A prompt 4x longer than the scorer's window: LLMLingua on SmolLM2 (window 8,192) with a 32k-token input.

    PYTHONPATH=. python benchmarks/llmlingua_long.py [--tokens 32768] [--rate 0.4]

The text is the start of ``../shared/data/corpus_wiki_news.txt``. Reports the achieved rate, the seconds, the peak
resident memory and the longest KV cache the iterative step held (it must stay within the window: memory is bounded
by the window, not by the input). Writes benchmarks/results/llmlingua_long.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
CORPUS = SHARED / "data" / "corpus_wiki_news.txt"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "llmlingua_long.json"))
    args = ap.parse_args(argv)
    if not CORPUS.exists():
        print(f"skipped: {CORPUS} is absent")
        return 0
    from mmcompress import create_compressor
    from mmcompress.models import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    ids = lm.tokenizer(CORPUS.read_text()[: args.tokens * 8], add_special_tokens=False)["input_ids"][: args.tokens]
    text = lm.tokenizer.decode(ids)
    c = create_compressor("llmlingua", model=lm.model, tokenizer=lm.tokenizer, compress_tail=True)
    t0 = time.perf_counter()
    res = c.compress(text, rate=args.rate)
    seconds = time.perf_counter() - t0
    summary = {
        "command": "PYTHONPATH=. python benchmarks/llmlingua_long.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_line(),
        "input_tokens": res.origin_tokens, "window": int(lm.model.config.max_position_embeddings),
        "compressed_tokens": res.compressed_tokens, "rate": round(res.rate, 4), "seconds": round(seconds, 1),
        "forward_tokens": res.extras.get("forward_tokens"), "max_kv_cache": res.extras.get("max_cache"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
