"""What ``mmcompress compress --method <soft method or saved folder>`` prints.

A soft prompt is vectors, not text, so the CLI shows what a user wants from it: with ``--question`` the frozen
LLM's answer read from the soft prompt; without one, the text the decoder regenerates from it (autoencoding), which
shows what the soft tokens carry. ``--json`` adds the token accounting of :meth:`SoftPrompt.to_dict`.
"""
from __future__ import annotations

import json
from typing import Any


def write_soft_result(compressor: Any, result: Any, args: Any, out: Any) -> None:
    # a question kept inside the prompt (e.g. interleaved "<image> ... Which one?") is answered like --question
    kept_question = any(getattr(getattr(p, "role", None), "value", None) == "question" for p in result.items[0])
    if args.question or kept_question:
        kind, text = "answer", compressor.generate(result, task="qa")[0]
    else:
        kind, text = "reconstruction", compressor.reconstruct(result)[0]
    if args.json:
        json.dump({**result.to_dict(), kind: text}, out, ensure_ascii=False, indent=2)
        out.write("\n")
        return
    out.write(text.strip() + "\n")
    out.write(f"--- {result.method}: {result.origin_total} -> {result.compressed_total} decoder positions "
              f"({result.ratio:.2f}x; {sum(result.soft_tokens)} soft tokens) in "
              f"{result.timings.get('total', 0.0):.2f} s; {kind} above\n")
