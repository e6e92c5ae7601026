"""Soft compression with the shipped, trained SmolLM2 compressors: a document becomes a few soft tokens per 64-token
chunk that the reader answers from, or that regenerate the text; then a hard method and a soft one in sequence.
SmolLM2-135M is a small reader: from a 4x soft context it answers about a quarter of held-out SQuAD questions with
the answer in its reply, more than from the full text (docs/soft.md), so expect some wrong answers.

    python examples/soft_context.py
    python examples/soft_context.py --question "What did Newton use instead of a lens?"
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcompress import Pipeline, create_compressor

DOCUMENT = Path(__file__).parent / "data" / "telescope.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--question", default="Who built the first practical reflecting telescope?")
    args = ap.parse_args()
    paragraphs = [p for p in DOCUMENT.read_text(encoding="utf-8").split("\n\n") if p.strip()]

    # question answering from a 4x soft context: the question's sentences are pooled finer (question_focus)
    qa = create_compressor("soft-smollm2-4x-qa")
    soft = qa.compress(paragraphs[3], question=args.question)  # the paragraph on Newton's reflector
    print(f"soft-smollm2-4x-qa: {soft.origin_total} tokens -> {soft.compressed_total} decoder positions "
          f"({sum(soft.soft_tokens)} soft tokens, the question kept as text; {soft.ratio:.2f}x)")
    print(f"  answer: {qa.generate(soft)[0]!r}\n")

    # the autoencoder: each chunk's soft tokens regenerate its 64 tokens
    autoencoder = create_compressor("soft-smollm2-4x")
    text = paragraphs[2]
    soft = autoencoder.compress(text)
    print(f"soft-smollm2-4x: {soft.origin_total} tokens -> {sum(soft.soft_tokens)} soft tokens ({soft.ratio:.2f}x)")
    print(f"  original:      {text[:200]!r}")
    print(f"  regenerated:   {autoencoder.reconstruct(soft)[0][:200]!r}\n")

    # hard then soft: LLMLingua keeps half of the tokens, the soft compressor encodes what is left at 4x
    pipe = Pipeline([{"compressor": "llmlingua", "rate": 0.5}, "soft-smollm2-4x-qa"])
    soft = pipe.compress("\n\n".join(paragraphs[2:5]), question=args.question)
    print(f"llmlingua 0.5 then soft-smollm2-4x-qa: {soft.ratio:.2f}x in all")
    print(f"  answer: {pipe.generate(soft)[0]!r}")


if __name__ == "__main__":
    main()
