"""Compress retrieved documents before they go to an LLM: three hard methods at the same budget, the instruction
and the question kept verbatim, and the same small reader (SmolLM2-135M-Instruct) answering from each prompt.

    python examples/rag_context.py                       # keep 40% of the documents' tokens
    python examples/rag_context.py --rate 0.25 --question "What is chromatic aberration?"
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mmcompress
from mmcompress import Prompt
from mmcompress.evaluation.reader import Reader

DOCUMENTS = Path(__file__).parent / "data" / "telescope.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.4, help="fraction of the prompt's tokens to keep")
    ap.add_argument("--question", default="Who built the first practical reflecting telescope?")
    ap.add_argument("--methods", default="selective_context,llmlingua,longllmlingua")
    args = ap.parse_args()

    documents = [p for p in DOCUMENTS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    prompt = Prompt.from_documents(documents, instruction="Answer the question from the documents in a few words.",
                                   question=args.question)
    reader = Reader()  # shares the loaded SmolLM2 with the compressors
    print(f"full prompt\n  answer: {reader.answer([prompt.text])[0]!r}\n")
    for method in args.methods.split(","):
        result = mmcompress.create_compressor(method).compress(prompt, rate=args.rate)
        assert result.text.endswith(args.question)  # the question (and the instruction) survive untouched
        print(f"{method}: {result.origin_tokens} -> {result.compressed_tokens} tokens ({result.ratio:.2f}x)")
        print(f"  answer: {reader.answer([result.text])[0]!r}")
        print("  kept: " + result.text[:300].replace("\n", " ") + " ...\n")


if __name__ == "__main__":
    main()
