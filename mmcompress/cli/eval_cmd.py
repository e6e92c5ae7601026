"""``mmcompress eval``: QA evaluation of compression methods (ratio, answer retention, reader accuracy, latency)."""
from __future__ import annotations

import json
import sys

from ..errors import BudgetError, ConfigError
from .common import add_model_flags, add_output_flag, add_run_flags, method_overrides, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate methods on a QA JSONL file (multi-document or single-document)")
    p.add_argument("--data", "-d", required=True, help="JSONL rows {id, question, answers, documents|context|document}")
    p.add_argument("--method", "-m", required=True,
                   help="comma-separated methods, YAML configs or saved folders (random is added as the floor)")
    p.add_argument("--rates", default="0.5,0.33,0.2", help="comma-separated fractions of tokens kept")
    p.add_argument("--reader", default="smollm2-135m", help="reader LLM that answers from the prompts")
    p.add_argument("--no-reader", action="store_true", help="measure ratio, retention and latency only")
    p.add_argument("--no-random", action="store_true", help="do not add the random baseline")
    p.add_argument("--limit", type=int, help="first N examples only")
    p.add_argument("--model", help="scorer model of every method (default: each method's own)")
    p.add_argument("--instruction", default=None, help="instruction put before the documents")
    p.add_argument("--max-new-tokens", type=int, default=24, help="longest reader answer")
    p.add_argument("--batch-size", type=int, default=4, help="reader batch size")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config field for every method named, e.g. --set device=cpu (the added random "
                        "floor takes only the fields it has)")
    add_output_flag(p, "folder for eval.json, eval.md, eval.png", default="eval_results", old="--out")
    add_run_flags(p)
    add_model_flags(p)
    p.add_argument("--stem", default="eval", help="file name stem of the outputs")
    p.set_defaults(func=run)


def parse_rates(text: str) -> list[float]:
    from ..budget import check_rate

    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BudgetError(f"--rates expects comma-separated numbers in (0, 1], got {text!r}") from None
    if not rates:
        raise BudgetError("--rates is empty")
    return [check_rate(r) for r in rates]


def _fields_of(method: str, overrides: dict) -> dict:
    """The overrides that are fields of ``method``'s config."""
    from ..registry import get_compressor_class

    names = set(get_compressor_class(method).config_class.field_names())
    return {k: v for k, v in overrides.items() if k in names}


def run(args) -> int:
    from ..evaluation.harness import DEFAULT_INSTRUCTION, evaluate, load_qa_file, random_floors
    from ..evaluation.systems import build_system
    from ..evaluation.reader import Reader, ReaderConfig

    rates = parse_rates(args.rates)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--method names no method")
    add_floor = not args.no_random and "random" not in methods
    examples = load_qa_file(args.data, args.limit)
    overrides = method_overrides(args)
    reader = None if args.no_reader else Reader(ReaderConfig(model=args.reader, max_new_tokens=args.max_new_tokens,
                                                             batch_size=args.batch_size))
    systems = [build_system(m, reader, **overrides) for m in methods]  # unknown methods fail before any model runs
    if add_floor:  # --set names the methods' knobs; the floor takes the ones it has (model, device...)
        # one random drop per granularity compared: LLMLingua-2 keeps words, so its floor drops random words
        floors = random_floors(systems, reader, **{k: v for k, v in _fields_of("random", overrides).items()
                                                   if k != "unit"})
        systems += floors
    instruction = DEFAULT_INSTRUCTION if args.instruction is None else args.instruction
    for s in systems:
        if hasattr(s, "instruction"):
            s.instruction = instruction
    report = evaluate(examples, systems, rates, reader, instruction=instruction, data_name=args.data,
                      progress=show_progress(args, sys.stderr.isatty()))
    paths = report.write(args.output, args.stem)
    print(report.markdown())
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0
