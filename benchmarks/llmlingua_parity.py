"""Parity of mmcompress's LLMLingua / LongLLMLingua with the published llmlingua 0.2.2.

Compresses the rows of ``../shared/peer/golden_multidoc_dev.jsonl`` (their documents come from
``../shared/data/multidoc_qa_dev.jsonl``) with the three settings the golden file records, writes our outputs in
the golden file's format, and scores them with ``../shared/peer/agreement.py --tokenizer <SmolLM2 folder>``.

    PYTHONPATH=. python benchmarks/llmlingua_parity.py [--limit 30] [--first-pass window|full|ranking]

Writes benchmarks/results/llmlingua_parity.{json,md} and the outputs to benchmarks/results/llmlingua_parity_ours.jsonl.
Targets (issue 3): llmlingua and llmlingua_tokens >= 0.95, longllmlingua >= 0.90.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
# ../shared next to the repository (MMCOMPRESS_SHARED overrides; git worktrees one level deeper also find it)
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
GOLDEN = SHARED / "peer" / "golden_multidoc_dev.jsonl"
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
AGREEMENT = SHARED / "peer" / "agreement.py"
RESULTS = REPO / "benchmarks" / "results"
INSTRUCTION = "Answer the question using the documents."
TARGETS = {"llmlingua": 0.95, "llmlingua_tokens": 0.95, "longllmlingua": 0.90}

# llmlingua's compress_prompt kwargs of each golden setting -> our method and config
SETTINGS = {
    "llmlingua": ("llmlingua", dict(rate=0.5)),
    "llmlingua_tokens": ("llmlingua", dict(rate=0.33, context_filter=False)),
    "longllmlingua": ("longllmlingua", dict(rate=0.4, rank_condition="after", condition_tokens=True, reorder="sort",
                                            dynamic_ratio=0.3, condition_compare=True, context_budget="+100")),
}


def ours_rows(rows, golden_ids, lm, first_pass: str | None, settings=SETTINGS, sink=None):
    """Our compressed prompts for every (row, setting), as golden-format dicts (each also written to ``sink``)."""
    from mmcompress import Prompt, create_compressor

    out = []
    for setting, (method, kwargs) in settings.items():
        kwargs = dict(kwargs)
        rate = kwargs.pop("rate")
        if first_pass:
            kwargs["first_pass"] = first_pass
        # the reference's own selection, even where it exceeds the rate (our default cuts it to the target)
        compressor = create_compressor(method, model=lm.model, tokenizer=lm.tokenizer, rate=rate, strict_budget=False,
                                       **kwargs)
        for row in rows:
            if row["id"] not in golden_ids:
                continue
            prompt = Prompt.from_documents(row["documents"], instruction=INSTRUCTION, question=row["question"])
            t0 = time.perf_counter()
            result = compressor.compress(prompt)
            out.append(dict(id=row["id"], setting=setting, compressed_prompt=result.text,
                            seconds=time.perf_counter() - t0, rate=result.rate))
            print(f"{setting:17s} {row['id']} {out[-1]['seconds']:.1f}s rate={result.rate:.3f}", flush=True)
            if sink is not None:
                sink.write(json.dumps(out[-1]) + "\n")
                sink.flush()
    return out


def run_agreement(golden: Path, ours: Path, tokenizer_dir: str) -> dict:
    cmd = [sys.executable, str(AGREEMENT), str(golden), str(ours), "--tokenizer", tokenizer_dir]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=30, help="golden rows to compare (the file has 30)")
    ap.add_argument("--first-pass", choices=["window", "full", "ranking"], default=None,
                    help="override the token-level first pass (default: each method's default)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated golden settings to run")
    ap.add_argument("--out", default=str(RESULTS / "llmlingua_parity"), help="output path without extension")
    ap.add_argument("--score-only", nargs="+", metavar="OURS_JSONL", default=None,
                    help="score outputs written earlier (e.g. by runs split over settings) instead of compressing")
    args = ap.parse_args(argv)
    if not GOLDEN.exists() or not DATA.exists():
        print(f"skipped: {GOLDEN} or {DATA} is absent")
        return 0
    from mmcompress.models import load_language_model
    from mmcompress.models.loading import resolve_model

    golden = [json.loads(line) for line in GOLDEN.open()]
    ids = list(dict.fromkeys(r["id"] for r in golden))[: args.limit]
    rows = [r for r in map(json.loads, DATA.open()) if r["id"] in set(ids)]
    settings = {k: SETTINGS[k] for k in args.settings.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ours_path = out.with_name(out.name + "_ours.jsonl")
    if args.score_only:
        ours = [json.loads(line) for f in args.score_only for line in Path(f).read_text().splitlines() if line.strip()]
        ours = [r for r in ours if r["id"] in set(ids) and r["setting"] in settings]
        ids = list(dict.fromkeys(r["id"] for r in ours))
        if Path(args.score_only[0]).resolve() != ours_path.resolve() or len(args.score_only) > 1:
            ours_path.write_text("".join(json.dumps(r) + "\n" for r in ours))
    else:
        lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
        with ours_path.open("w") as sink:
            ours = ours_rows(rows, set(ids), lm, args.first_pass, settings, sink)
    scores = run_agreement(GOLDEN, ours_path, resolve_model("smollm2-135m"))
    ref_seconds = {}
    for r in golden:
        if r["id"] in set(ids):
            ref_seconds.setdefault(r["setting"], []).append(r["seconds"])
    summary = {
        "command": "PYTHONPATH=. python benchmarks/llmlingua_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_line(),
        "rows": len(ids),
        "rows_per_setting": {s: sum(r["setting"] == s for r in ours) for s in settings},
        "first_pass": args.first_pass or "method default",
        "agreement": scores,
        "targets": TARGETS,
        "met": {s: scores[s] >= TARGETS[s] for s in settings if s in scores},
        "achieved_rate": {s: round(sum(r["rate"] for r in ours if r["setting"] == s) / max(1, sum(
            r["setting"] == s for r in ours)), 4) for s in settings},
        "seconds_per_call": {s: round(sum(r["seconds"] for r in ours if r["setting"] == s) / max(1, sum(
            r["setting"] == s for r in ours)), 2) for s in settings},
        "reference_seconds_per_call_when_recorded": {s: round(sum(v) / len(v), 2) for s, v in ref_seconds.items()},
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# LLMLingua parity with llmlingua 0.2.2 ({summary['rows']} rows of golden_multidoc_dev.jsonl)", "",
        f"Command: `{summary['command']}`; agreement by `../shared/peer/agreement.py --tokenizer <SmolLM2>`.", "",
        "| setting | rows | agreement | target | met | our achieved rate |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in settings:
        t = TARGETS[s]
        lines.append(f"| {s} | {summary['rows_per_setting'][s]} | {scores.get(s, float('nan')):.4f} | {t} | "
                     f"{'yes' if summary['met'][s] else 'no'} | "
                     f"{summary['achieved_rate'][s]:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
