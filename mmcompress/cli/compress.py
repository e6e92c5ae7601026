"""``mmcompress compress``: compress a text file, stdin, a literal prompt, or a JSONL file of prompts."""
from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import InputFileError, InvalidPromptError
from .common import looks_like_literal_text, parse_overrides, read_text


def add_parser(sub) -> None:
    p = sub.add_parser("compress", help="compress a prompt (file, '-' for stdin, or a JSONL file with --jsonl)")
    p.add_argument("input", nargs="?", default="-", metavar="FILE|-",
                   help="text file, '-' for stdin, or a literal prompt in quotes")
    p.add_argument("--method", "-m", default="selective_context",
                   help="registered method or YAML config (see `mmcompress list`)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--rate", "-r", type=float, help="fraction of tokens to keep, in (0, 1]")
    budget.add_argument("--target-tokens", "-n", type=int, help="number of tokens to keep (whole prompt)")
    p.add_argument("--question", "-q", help="question (kept verbatim; question-aware methods condition on it)")
    p.add_argument("--instruction", "-i", help="instruction (kept verbatim)")
    p.add_argument("--model", help="scorer model: HF id, local folder or alias (default: smollm2-135m)")
    p.add_argument("--target-tokenizer", help="also count tokens with this tokenizer (the LLM the prompt is for)")
    p.add_argument("--image", action="append", default=None, help="image file for an <image> marker (repeatable)")
    # Vision methods (see mmcompress/cli/compress_vision.py): visual tokens per image, and the VLM's answer length
    p.add_argument("--tokens", type=int, help="vision methods: visual tokens kept per image")
    p.add_argument("--max-new-tokens", type=int, default=32, help="vision methods with --model: tokens to generate")
    p.add_argument("--template", help="vision methods with --model: prompt template, e.g. 'USER: {prompt} ASSISTANT:'")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="set a config field of the method, e.g. --set unit=sentence")
    p.add_argument("--json", action="store_true", help="print a JSON object with the text and statistics")
    p.add_argument("--jsonl", action="store_true",
                   help="input is JSONL: one prompt per line ({'prompt'|'context'|'documents', 'question', ...})")
    p.add_argument("--output", "-o", help="write results here instead of stdout")
    p.set_defaults(func=run)


def _compressor(args):
    from ..factory import create_compressor

    overrides = parse_overrides(args.overrides)
    if args.model:
        overrides["model"] = args.model
    return create_compressor(args.method, **overrides)


def run(args) -> int:
    from ..budget import check_rate, check_target_tokens

    check_rate(args.rate)  # fail before any model is loaded
    check_target_tokens(args.target_tokens)
    budget: dict[str, Any] = {}
    if args.rate is not None:
        budget["rate"] = args.rate
    if args.target_tokens is not None:
        budget["target_tokens"] = args.target_tokens
    if args.jsonl:
        return _run_jsonl(args, budget)
    if args.input not in (None, "-") and looks_like_literal_text(args.input):
        text = args.input
    else:
        text = read_text(args.input).rstrip("\n")  # a file's final newline is not part of the prompt
    if not text.strip():
        raise InvalidPromptError("the prompt is empty: there is no text to compress")
    from .compress_vision import is_vision_method

    if is_vision_method(args.method):
        from .compress_vision import run_vision

        return run_vision(args, text, parse_overrides(args.overrides))
    compressor = _compressor(args)
    result = compressor.compress(text, question=args.question, instruction=args.instruction, images=args.image,
                                 target_tokenizer=args.target_tokenizer, **budget)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if hasattr(compressor, "generate") and hasattr(result, "items"):  # soft methods (SoftPrompt)
            from .compress_soft import write_soft_result

            write_soft_result(compressor, result, args, out)
        elif args.json:
            json.dump(result.to_dict(), out, ensure_ascii=False, indent=2)
            out.write("\n")
        else:
            out.write(result.text.rstrip("\n") + "\n")
            out.write(_stats_line(result) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _stats_line(result) -> str:
    line = (f"--- {result.method}: {result.origin_tokens} -> {result.compressed_tokens} tokens "
            f"(rate {result.rate:.3f}, {result.ratio:.2f}x) in {result.timings.get('total', 0.0):.2f} s")
    if result.timings.get("load"):
        line += f" (+{result.timings['load']:.2f} s loading the model)"
    if result.target_origin_tokens is not None:
        line += f"; target tokenizer: {result.target_origin_tokens} -> {result.target_compressed_tokens}"
    return line


def _prompt_from_row(row: dict[str, Any], lineno: int):
    from ..prompt import Prompt

    if not isinstance(row, dict):
        raise InvalidPromptError(f"line {lineno}: expected a JSON object")
    question, instruction = row.get("question"), row.get("instruction")
    if "documents" in row:
        return Prompt.from_documents(row["documents"], instruction=instruction, question=question)
    if "messages" in row:
        return Prompt.from_messages(row["messages"])
    for key in ("prompt", "context", "text", "document"):
        if key in row:
            return Prompt.coerce(row[key], question=question, instruction=instruction)
    raise InvalidPromptError(f"line {lineno}: needs one of 'prompt', 'context', 'text', 'document', 'documents'")


def _run_jsonl(args, budget: dict[str, Any]) -> int:
    from tqdm.auto import tqdm

    text = read_text(args.input)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise InputFileError(f"line {lineno} is not valid JSON: {e.msg}") from None
    prompts = [_prompt_from_row(row, lineno) for lineno, row in rows]
    compressor = _compressor(args)
    results = compressor.compress_batch(prompts, progress=sys.stderr.isatty() or len(prompts) > 20,
                                        target_tokenizer=args.target_tokenizer, **budget)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for (_, row), result in zip(rows, results):
            record = result.to_dict()
            if "id" in row:
                record = {"id": row["id"], **record}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    return 0
