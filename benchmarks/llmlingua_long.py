"""Long prompts, ours against the published llmlingua 0.2.2 side by side: seconds and peak memory at 10k and 32k
tokens (SmolLM2's window is 8,192).

    PYTHONPATH=. python benchmarks/llmlingua_long.py [--tokens 10240,32768] [--threads 1] [--peer-timeout 1800]
        [--peer-rss-gib 12]

Each prompt is many documents of ``../shared/data/multidoc_qa_dev.jsonl`` (whole paragraphs, in file order, until
the documents hold ``--tokens`` SmolLM2 tokens) with the first row's question, compressed by LLMLingua at rate 0.5
(the reference script's ``llmlingua`` setting; ours: the registered method's defaults at the same rate). Every
call runs in a fresh process, ours and the peer's alike, so its peak resident memory (``ru_maxrss``, the model
included) is its own. The peer is killed past ``--peer-timeout`` seconds or ``--peer-rss-gib`` GiB, and that is
reported. Ours also reports the longest KV cache the iterative step held: memory bounded by the window, not by the
input. Writes benchmarks/results/llmlingua_long.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from common import add_common_args, apply_common_args, command_line, write_results  # noqa: E402  (on sys.path)
from llmlingua_peer import SHARED, PeerProcess, peer_available  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
INSTRUCTION = "Answer the question using the documents."
RATE = 0.5


def long_prompt(tokenizer, tokens: int) -> tuple[list[str], str]:
    """Documents (whole paragraphs of the QA file, in order) holding about ``tokens`` tokens, and a question."""
    rows = [json.loads(line) for line in DATA.open()]
    docs, total = [], 0
    for doc in (d for r in rows for d in r["documents"]):
        if total >= tokens:
            break
        docs.append(doc)
        total += len(tokenizer(doc, add_special_tokens=False)["input_ids"])
    return docs, rows[0]["question"]


def ours_once(spec: str) -> int:
    """Child process: compress one long prompt with our LLMLingua, print seconds and peak memory as JSON."""
    args = json.loads(spec)
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    from mmcompress import Prompt, create_compressor
    from mmcompress.models import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    docs, question = long_prompt(lm.tokenizer, args["tokens"])
    compressor = create_compressor("llmlingua", model=lm.model, tokenizer=lm.tokenizer)
    prompt = Prompt.from_documents(docs, instruction=INSTRUCTION, question=question)
    t, c = time.perf_counter(), time.process_time()
    res = compressor.compress(prompt, rate=RATE)
    print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                      "origin_tokens": res.origin_tokens, "compressed_tokens": res.compressed_tokens,
                      "forward_tokens": res.extras.get("forward_tokens"), "max_kv_cache": res.extras.get("max_cache"),
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
    return 0


def previous_rows(path: Path) -> list[dict]:
    """The rows of an earlier results file, each with the command that measured it and the length it asked for."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    asked = {int(a) for a in data["command"].split("--tokens ")[1].split()[0].split(",")} \
        if "--tokens " in data["command"] else set()
    out = []
    for row in data["rows"]:
        guess = min(asked, key=lambda a: abs(a - (row.get("prompt tokens") or 0)), default=row.get("prompt tokens"))
        out.append({"tokens asked": guess, "command": data["command"], **row})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="10240,32768", help="comma-separated prompt lengths (document tokens)")
    ap.add_argument("--peer-timeout", type=float, default=1800, help="seconds before the peer's call is killed")
    ap.add_argument("--peer-rss-gib", type=float, default=12, help="resident GiB at which the peer's call is killed")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--keep-previous", action="store_true",
                    help="keep the rows of the existing results file for the lengths not run now (each row names "
                         "the command that measured it)")
    ap.add_argument("--ours-once", help=argparse.SUPPRESS)  # child mode: one call of ours (JSON spec)
    add_common_args(ap, str(REPO / "benchmarks" / "results" / "llmlingua_long"))
    args = ap.parse_args(argv)
    if args.ours_once:
        return ours_once(args.ours_once)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    apply_common_args(args)
    from mmcompress.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    why = None if args.no_peer else peer_available()
    rows = []
    for tokens in [int(x) for x in args.tokens.split(",")]:
        docs, question = long_prompt(tokenizer, tokens)
        spec = json.dumps({"tokens": tokens, "threads": args.threads})
        child = subprocess.run([sys.executable, __file__, "--ours-once", spec], capture_output=True, text=True,
                               env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        ours = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {
            "failed": f"exit {child.returncode}: {child.stderr.strip().splitlines()[-1:]}"}
        row = {"tokens asked": tokens, "prompt tokens": ours.get("origin_tokens"), "documents": len(docs)}
        row.update({f"ours {k}": v for k, v in ours.items()})
        print(json.dumps(row), flush=True)
        if args.no_peer or why:
            row["peer failed"] = "not run" + (f": {why}" if why else "")
        else:
            with PeerProcess(threads=args.threads, rss_limit_gib=args.peer_rss_gib, timeout_s=args.peer_timeout) as peer:
                reply = peer.compress(docs, question, "llmlingua")
            row.update({f"peer {k}": v for k, v in reply.items() if k != "compressed_prompt"})
        if "ours seconds" in row and "peer seconds" in row:
            row["peer/ours"] = row["peer seconds"] / row["ours seconds"]
            row["peer/ours cpu"] = row["peer cpu_seconds"] / row["ours cpu_seconds"]
        row["command"] = command_line()
        rows.append(row)
        print(json.dumps(row), flush=True)
    previous = previous_rows(Path(args.out).with_suffix(".json")) if args.keep_previous else []
    rows = sorted([r for r in previous if r.get("tokens asked") not in {r["tokens asked"] for r in rows}] + rows,
                  key=lambda r: r["tokens asked"])
    columns = ["prompt tokens", "documents", "ours seconds", "ours cpu_seconds", "ours peak_rss_gib", "ours max_kv_cache",
               "ours compressed_tokens", "peer seconds", "peer cpu_seconds", "peer peak_rss_gib",
               "peer compressed_tokens", "peer failed", "peer cpu_seconds_when_killed", "peer/ours", "peer/ours cpu"]
    columns.append("command")
    notes = (f"LLMLingua at rate {RATE} on multi-document prompts (whole paragraphs of multidoc_qa_dev.jsonl); "
             "SmolLM2-135M, float32, CPU; each call in a fresh process (peak RSS includes the model). The peer is "
             f"killed past {args.peer_timeout:g} s or {args.peer_rss_gib:g} GiB resident.")
    write_results(args.out, "LLMLingua on long prompts: ours and llmlingua 0.2.2 side by side", rows, columns=columns,
                  notes=notes, extra={"rate": RATE})
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
