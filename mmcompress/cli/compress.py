"""``mmcompress compress``: compress a text file, stdin, a literal prompt, or a JSONL file of prompts."""
from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import ConfigError, InputFileError, InvalidPromptError, MMCompressError
from .common import check_output_path, looks_like_literal_text, parse_overrides, read_text


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
    p.add_argument("--skip-errors", action="store_true",
                   help="--jsonl: write the good rows and report bad ones (line, reason) on stderr")
    p.add_argument("--resume", action="store_true",
                   help="--jsonl with -o: keep the rows already in the output file and compress only the others")
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
    check_output_path(args.output)
    if (args.skip_errors or args.resume) and not args.jsonl:
        raise ConfigError("--skip-errors and --resume apply to --jsonl input")
    if args.resume and not args.output:
        raise ConfigError("--resume needs -o FILE: the output file holds the rows already done")
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


def _prompt_from_row(row: Any, question: str | None = None, instruction: str | None = None):
    """The prompt of one JSONL row; ``question`` / ``instruction`` (from the command line) fill rows without one."""
    from ..prompt import Prompt

    if not isinstance(row, dict):
        raise InvalidPromptError(f"expected a JSON object, got {type(row).__name__}")
    for key, value in (("question", question), ("instruction", instruction)):
        if value is not None and row.get(key) not in (None, value):
            raise InvalidPromptError(f"the row has its own {key!r} and --{key} was given; drop one of them")
    question = row.get("question", question)
    instruction = row.get("instruction", instruction)
    for key, value in (("question", question), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise InvalidPromptError(f"{key!r} must be a string, got {type(value).__name__}")
    if "documents" in row:
        return Prompt.from_documents(row["documents"], instruction=instruction, question=question)
    if "messages" in row:
        if question is not None or instruction is not None:
            raise InvalidPromptError("a 'messages' row takes its question (the last user message) and instruction "
                                     "(the system message) from the messages; drop 'question' / 'instruction' "
                                     "or --question / --instruction")
        return Prompt.from_messages(row["messages"])
    for key in ("prompt", "context", "text", "document"):
        if key in row:
            if not isinstance(row[key], str):
                raise InvalidPromptError(f"{key!r} must be a string, got {type(row[key]).__name__}")
            prompt = Prompt.coerce(row[key], question=question, instruction=instruction)
            if prompt.is_empty():
                raise InvalidPromptError(f"{key!r} is empty: there is no text to compress")
            return prompt
    raise InvalidPromptError("needs one of 'prompt', 'context', 'text', 'document', 'documents', 'messages'")


def _read_rows(args) -> tuple[list[tuple[int, dict, Any]], list[tuple[int, str]]]:
    """``(line, row, prompt)`` of every good row and ``(line, reason)`` of every bad one."""
    good, bad = [], []
    for lineno, line in enumerate(read_text(args.input).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((lineno, f"not valid JSON: {e.msg}"))
            continue
        try:
            good.append((lineno, row, _prompt_from_row(row, args.question, args.instruction)))
        except MMCompressError as e:
            bad.append((lineno, str(e)))
    return good, bad


def _done_lines(path: str) -> set[int]:
    """Input lines already in an output file written by an earlier (interrupted) run; a torn last line is dropped."""
    from pathlib import Path

    done, keep = set(), []
    file = Path(path)
    if not file.exists():
        return done
    for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
            done.add(int(record["line"]))
            keep.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # the line being written when the run stopped
    file.write_text("".join(keep), encoding="utf-8")
    return done


def _run_jsonl(args, budget: dict[str, Any]) -> int:
    """Rows are compressed a chunk at a time and written (and flushed) as each chunk completes, so an interrupted
    run keeps what it did (``--resume`` continues it); each output record names its input ``line``."""
    from tqdm.auto import tqdm

    good, bad = _read_rows(args)
    if bad and not args.skip_errors:
        lineno, reason = bad[0]
        more = f" (and {len(bad) - 1} more bad rows; --skip-errors writes the good ones)" if len(bad) > 1 else ""
        raise InputFileError(f"line {lineno}: {reason}{more}")
    done = _done_lines(args.output) if args.resume else set()
    todo = [r for r in good if r[0] not in done]
    compressor = _compressor(args)
    chunk = int(getattr(compressor, "batch_chunk", 16))
    out = open(args.output, "a" if args.resume else "w", encoding="utf-8") if args.output else sys.stdout
    bar = tqdm(total=len(todo), disable=not (sys.stderr.isatty() or len(todo) > 20), desc=compressor.name)
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            for (lineno, row, _), result in zip(part, _compress_rows(compressor, part, args, budget, bad)):
                if result is None:
                    continue
                record = {"line": lineno, **result.to_dict()}
                if "id" in row:
                    record = {"id": row["id"], **record}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(part))
    finally:
        bar.close()
        if args.output:
            out.close()
    if bad:
        for lineno, reason in sorted(bad):
            print(f"skipped line {lineno}: {reason}", file=sys.stderr)
        print(f"warning: {len(bad)} of {len(good) + len(bad)} rows were skipped (listed above)", file=sys.stderr)
    return 0


def _compress_rows(compressor, part, args, budget, bad) -> list:
    """Results of one chunk of rows (``None`` for a row that failed, its line and reason added to ``bad``)."""
    prompts = [prompt for _, _, prompt in part]
    try:
        return list(compressor.compress_batch(prompts, target_tokenizer=args.target_tokenizer, **budget))
    except MMCompressError:
        if len(part) == 1 and not args.skip_errors:
            raise InputFileError(f"line {part[0][0]}: {sys.exc_info()[1]}") from None
    results = []
    for lineno, _, prompt in part:  # find the rows at fault, one at a time
        try:
            results.append(compressor.compress(prompt, target_tokenizer=args.target_tokenizer, **budget))
        except MMCompressError as e:
            if not args.skip_errors:
                raise InputFileError(f"line {lineno}: {e}") from None
            bad.append((lineno, str(e)))
            results.append(None)
    return results
