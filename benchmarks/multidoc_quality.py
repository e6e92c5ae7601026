"""Quality of the hard methods on multi-document QA, and LongLLMLingua against the published package.

    PYTHONPATH=. python benchmarks/multidoc_quality.py [--limit 30] [--rates 0.5,0.4,0.33,0.2]
        [--reader-limit 10] [--reader-rates 0.5,0.33] [--methods random,selective_context,llmlingua2,...]
        [--scorers smollm2-135m,gemma3-270m]

1. Answer retention, achieved rate and latency of every method at every rate on the first ``--limit`` rows (after
   ``--skip``) of
   ../shared/data/multidoc_qa_dev.jsonl (no reader: cheap enough for more rows).
2. The published llmlingua 0.2.2's outputs for the same rows (../shared/peer/golden_multidoc_dev.jsonl) scored the
   same way: ``longllmlingua`` at rate 0.4, ``llmlingua`` at 0.5 and ``llmlingua_tokens`` at 0.33.
3. Reader accuracy (SmolLM2-135M-Instruct answering from the original and the compressed prompt: EM, F1,
   contains-answer) on the first ``--reader-limit`` rows at ``--reader-rates``.
4. With ``--scorers``, every scorer-based method (LLMLingua, LongLLMLingua, Selective Context) runs once per scoring
   model, named ``method [scorer]``, on the same rows, rates, random floor and reader; the summary adds each pair of
   scorers' paired comparison (rows only one of them keeps the answer in, McNemar p) and every system's achieved rate
   counted in the first scorer's tokens, so that scorers with different tokenizers are compared at the same budget.
Writes benchmarks/results/multidoc_quality{,_reader}.{json,md,png} and multidoc_quality_summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)
from mmcompress.evaluation.metrics import mcnemar_exact  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED", REPO.parent / "shared"))
if not SHARED.exists():
    SHARED = Path("/work/shared")
GOLDEN_RATES = {"llmlingua": 0.5, "llmlingua_tokens": 0.33, "longllmlingua": 0.4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "multidoc_qa_dev.jsonl"))
    ap.add_argument("--golden", default=str(SHARED / "peer" / "golden_multidoc_dev.jsonl"))
    ap.add_argument("--methods", default=None, help="comma-separated (default: every hard method available)")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--skip", type=int, default=0,
                    help="leave out the first N rows (e.g. choose a setting on rows the reported table does not use)")
    ap.add_argument("--rates", default="0.5,0.4,0.2")
    ap.add_argument("--reader-limit", type=int, default=6)
    ap.add_argument("--reader-rates", default="0.4")
    ap.add_argument("--scorers", default=None,
                    help="comma-separated model aliases: run each scorer-based method once per scoring model")
    ap.add_argument("--stem", default="multidoc_quality", help="file name stem of the results")
    ap.add_argument("--method-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config field for every method but random, e.g. strict_budget=false (the published "
                         "package's budget semantics: its selection as it is, even over the rate)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    import mmcompress
    from mmcompress.evaluation import Reader, build_system, evaluate, load_qa_file
    from mmcompress.evaluation.harness import PrecomputedSystem, random_floor_name, random_floors
    from mmcompress.models import load_tokenizer

    available = set(mmcompress.list_compressors("hard"))
    wanted = args.methods.split(",") if args.methods else [
        m for m in ("random", "selective_context", "llmlingua2", "llmlingua", "longllmlingua") if m in available]
    rates = [float(x) for x in args.rates.split(",")]
    out = Path(args.out)
    examples = load_qa_file(args.data, args.skip + args.limit)[args.skip :]
    scorers = args.scorers.split(",") if args.scorers else [None]
    from mmcompress.cli.common import parse_overrides

    fields = parse_overrides(args.method_set)
    systems = [build_scored(build_system, m, scorer, len(scorers) > 1, **fields)
               for m in wanted if m != "random" for scorer in (scorers if m in SCORED else [None])]
    # each method is compared with a random drop of its own granularity (LLMLingua-2 keeps words: random words)
    floor_of = {s.name: random_floor_name(s.compressor.selection_unit) for s in systems if hasattr(s, "compressor")}
    if "random" in wanted:
        systems += random_floors(systems, None)
    report = evaluate(examples, systems, rates, None, data_name=args.data, progress=True)

    golden_rows = [json.loads(x) for x in Path(args.golden).read_text().splitlines() if x.strip()]
    tok = load_tokenizer("smollm2-135m")
    for setting, rate in GOLDEN_RATES.items():
        texts = {r["id"]: r["compressed_prompt"] for r in golden_rows if r["setting"] == setting}
        seconds = {r["id"]: r["seconds"] for r in golden_rows if r["setting"] == setting}
        rows = [ex for ex in examples if ex.id in texts]
        if not rows:
            continue
        peer = PrecomputedSystem(f"{setting} (llmlingua 0.2.2)", texts, tok, None, seconds=seconds)
        extra = evaluate(rows, [peer], [rate], None, data_name=args.data)
        report.results += extra.results
        report.rows += extra.rows
    paths = report.write(out, args.stem)
    print(report.markdown())

    by = {(r.system, r.requested_rate): r for r in report.results}
    summary = {"machine": machine_line(), "rows": len(examples), "methods": wanted, "scorers": scorers,
               "rates": rates, "command": " ".join(["python", *sys.argv])}
    ours, peer = by.get(("longllmlingua", 0.4)), by.get(("longllmlingua (llmlingua 0.2.2)", 0.4))
    if peer is not None:
        summary["published_longllmlingua_retention_at_0.4"] = peer.retention
        summary["published_longllmlingua_rows"] = peer.n
    if ours is not None and peer is not None:
        same = [r for r in report.rows if r["system"] == "longllmlingua" and r["rate"] == 0.4
                and r["id"] in {x["id"] for x in report.rows if x["system"].startswith("longllmlingua (")}]
        summary["longllmlingua_retention_at_0.4_same_rows"] = sum(r["retention"] for r in same) / max(1, len(same))
        summary["longllmlingua_at_least_published"] = summary["longllmlingua_retention_at_0.4_same_rows"] >= peer.retention
    beats = {}
    for m in floor_of:
        floor = floor_of[m]
        beats[m] = {str(rate): dict(retention=by[(m, rate)].retention, random=by[(floor, rate)].retention,
                                    random_system=floor, beats=by[(m, rate)].retention > by[(floor, rate)].retention,
                                    **paired_against_random(report.rows, m, rate, floor))
                    for rate in rates if (m, rate) in by and (floor, rate) in by}
    summary["retention_vs_random"] = beats
    if len(scorers) > 1:
        first = scorers[0]
        summary["scorers_paired"] = {  # rows only one scorer keeps the answer in, per method and rate
            f"{m} [{s}] vs [{first}]": {str(r): paired_against_random(report.rows, f"{m} [{s}]", r, f"{m} [{first}]")
                                        for r in rates}
            for m in wanted if m in SCORED for s in scorers[1:]}
        summary[f"rate_in_{first}_tokens"] = rates_in_tokens(report.rows, examples, load_tokenizer(first))

    if args.reader_limit:
        reader = Reader(batch_size=4)
        reader_examples = examples[: args.reader_limit]
        for s in systems:  # same compressions, now read by the reader
            s.reader = reader
        reader_systems = systems
        reader_rates = [float(x) for x in args.reader_rates.split(",")]
        rep2 = evaluate(reader_examples, reader_systems, reader_rates, reader, data_name=args.data, progress=True)
        rep2.write(out, f"{args.stem}_reader")
        print(rep2.markdown())
        summary["reader"] = {"rows": len(reader_examples), "original": rep2.original,
                             "results": rep2.to_dict()["results"]}
    (out / f"{args.stem}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "reader"}, indent=2))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


SCORED = ("selective_context", "llmlingua", "longllmlingua")  # methods whose scores come from a causal LM


def build_scored(build_system, method: str, scorer: str | None, named: bool, **fields):
    """``method`` scored by ``scorer`` (its config's model when None), named ``method [scorer]`` when ``named``."""
    if scorer is None:
        return build_system(method, None, **fields)
    system = build_system(method, None, model=scorer, **fields)
    if named:
        system.name = f"{method} [{scorer}]"
    return system


def rates_in_tokens(rows: list[dict], examples: list, tokenizer) -> dict:
    """Every system's achieved rate at every requested rate, counted in ``tokenizer``'s tokens (whole prompts)."""
    from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    original = {ex.id: count(ex.prompt(DEFAULT_INSTRUCTION).text) for ex in examples}
    sums: dict[str, list[int]] = {}
    for r in rows:
        if r.get("prompt") is not None and r["id"] in original:
            s = sums.setdefault(f"{r['system']} @ {r['rate']}", [0, 0])
            s[0] += count(r["prompt"])
            s[1] += original[r["id"]]
    return {k: round(a / b, 4) for k, (a, b) in sums.items()}


def paired_against_random(rows: list[dict], method: str, rate: float, floor: str = "random") -> dict:
    """Rows where only the method keeps an answer (won) or only the random ``floor`` does (lost), and the exact
    two-sided McNemar p-value of that split: how sure a retention gap over the same rows is."""
    ret = {(r["system"], r["id"]): r["retention"] for r in rows if r["rate"] == rate}
    ids = [i for (system, i) in ret if system == method and (floor, i) in ret]
    won = sum(1 for i in ids if ret[(method, i)] > ret[(floor, i)])
    lost = sum(1 for i in ids if ret[(method, i)] < ret[(floor, i)])
    return {"rows": len(ids), "won": won, "lost": lost, "mcnemar_p": mcnemar_exact(won, lost)}


if __name__ == "__main__":
    sys.exit(main())
