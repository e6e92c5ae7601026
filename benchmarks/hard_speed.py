"""Speed of the hard methods, side by side in one run: the published llmlingua 0.2.2, ours and the floor (one
forward pass of the same scorer over the same tokens), interleaved in rounds.

    PYTHONPATH=. python benchmarks/hard_speed.py [--rows 3] [--rounds 3] [--threads 1] [--methods ...] [--no-peer]

For each multi-document prompt of ``../shared/data/multidoc_qa_dev.jsonl`` (10 documents, about 1,600 SmolLM2
tokens) and each round, every method's sides are timed one after the other, in an order that turns with the round
(peer, ours, floor; then ours, floor, peer; then floor, peer, ours...), so a load that comes and goes on a shared
machine falls on every side alike. The peer is llmlingua 0.2.2's ``compress_prompt`` in its own environment (a
worker of ``benchmarks/llmlingua_peer.py``, started once, so no start-up cost is timed), with the reference
script's settings (``llmlingua``: rate 0.5; ``longllmlingua``: rate 0.4 and the LongLLMLingua options;
``llmlingua2``: ``PromptCompressor(use_llmlingua2=True)`` in a second worker, rate 0.5, on the same classifier
folder as ours, by default the published BERT-base classifier's architecture with random weights, see
``llmlingua2_classifiers.py``: timing needs the architecture, not the training); ours is
the registered method with its defaults at the same rate; the floor is ``CausalLMScorer.token_nll`` over the
whole prompt (batched, LM head included), and for llmlingua2 its own token classifier over what it classifies.

Per side: the median and the min over rounds of the seconds summed over prompts, wall clock and CPU time of the
process (the CPU time is what the side itself computed, whatever else runs). Ratios per round (ours / floor,
peer / ours), reported as median [min, max]. The agreement column compares ours with the peer's output on the same
prompt (``../shared/peer/agreement.py``; the defaults ``first_pass="ranking"`` / ``"window"`` are not the reference's
exact pass, ``first_pass="full"`` is; ``llmlingua_parity.py`` measures them). Writes benchmarks/results/hard_speed.{json,md}. CPU targets (issue 23):
llmlingua <= 1.6x the floor and longllmlingua <= 2.0x, both >= 1.2x faster than the peer; selective_context and
llmlingua2 <= 1.3x.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from common import add_common_args, apply_common_args, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from llmlingua_peer import SHARED, PeerProcess, peer_available  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
RESULTS = REPO / "benchmarks" / "results"
INSTRUCTION = "Answer the question using the documents."
TARGETS = {"selective_context": 1.3, "llmlingua": 1.6, "longllmlingua": 2.0, "llmlingua2": 1.3}
PEER_SPEEDUP_TARGET = 1.2
METHODS = {  # name: (registered method, config overrides, rate, the peer's setting of the same call)
    "llmlingua": ("llmlingua", {}, 0.5, "llmlingua"),
    "longllmlingua": ("longllmlingua", {}, 0.4, "longllmlingua"),
    "selective_context": ("selective_context", {}, 0.5, None),
    "llmlingua2": ("llmlingua2", {}, 0.5, "llmlingua2"),
    "llmlingua first_pass=full": ("llmlingua", dict(first_pass="full"), 0.5, "llmlingua"),
    "longllmlingua first_pass=full": ("longllmlingua", dict(first_pass="full"), 0.4, "longllmlingua"),
}
DEFAULT_METHODS = "llmlingua,longllmlingua,selective_context,llmlingua2"


def timed(fn) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds of this process, and the result of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def classifier_floor(compressor, documents: list[str]):
    """LLMLingua-2's own floor: one batched pass of its token classifier over the tokens it classifies (the
    documents, each cut at the encoder's limit)."""
    scorer = compressor.scorer
    step = scorer.chunk_tokens
    chunks = [tk.ids[i : i + step] for tk in scorer.tokenize(documents) for i in range(0, len(tk.ids), step)]
    return lambda: scorer.token_probs(chunks)


def side_orders(sides: list[str], rounds: int) -> list[list[str]]:
    """Round ``r`` runs the sides rotated by ``r``: every side comes first, in the middle and last in turn."""
    return [sides[r % len(sides):] + sides[: r % len(sides)] for r in range(rounds)]


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def agreement_fn(tokenizer):
    path = SHARED / "peer" / "agreement.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda a, b: module.agreement(a, b, lambda s: tokenizer.encode(s, add_special_tokens=False))


def summarise(name: str, calls: list[dict], rounds: int) -> dict:
    """One table row: per side the median / min over rounds of the per-round totals, and the per-round ratios."""
    total = {}  # (side, clock) -> per-round totals over prompts, for the sides every call timed
    for side in ("ours", "floor", "peer"):
        if all("s" in c.get(side, {}) for c in calls):
            for clock in ("s", "cpu_s"):
                total[side, clock] = [sum(c[side][clock] for c in calls if c["round"] == r) for r in range(rounds)]
    failed = sorted({c["peer"]["failed"] for c in calls if "failed" in c.get("peer", {})})
    row = {"method": name}
    for side in ("peer", "ours", "floor"):
        if (side, "s") in total:
            row[f"{side} s (median)"] = statistics.median(total[side, "s"])
            row[f"{side} s (min)"] = min(total[side, "s"])
            row[f"{side} cpu s (median)"] = statistics.median(total[side, "cpu_s"])
    ratio = lambda a, b, clock: spread([x / y for x, y in zip(total[a, clock], total[b, clock])])  # noqa: E731
    row["ours/floor"] = ratio("ours", "floor", "s")
    row["ours/floor min/min"] = min(total["ours", "s"]) / min(total["floor", "s"])
    row["ours/floor cpu"] = ratio("ours", "floor", "cpu_s")
    if ("peer", "s") in total:
        row["peer/floor"] = ratio("peer", "floor", "s")
        row["peer/ours"] = ratio("peer", "ours", "s")
        row["peer/ours min/min"] = min(total["peer", "s"]) / min(total["ours", "s"])
        row["peer/ours cpu"] = ratio("peer", "ours", "cpu_s")
    if failed:
        row["peer failed"] = "; ".join(failed)
    agree = [c["agreement"] for c in calls if c.get("agreement") is not None]
    row["agreement with peer"] = statistics.mean(agree) if agree else None
    return row


def fmt_spread(s: dict | None) -> str:
    return "-" if s is None else f"{s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]"


def report(args, calls: dict[str, list[dict]], rounds: int, rows: list[dict], classifier: str | None,
           with_peer: bool) -> None:
    """Write the table of the first ``rounds`` rounds."""
    calls = {n: [c for c in cs if c["round"] < rounds] for n, cs in calls.items()}
    table = [summarise(name, calls[name], rounds) for name in calls]
    for row in table:
        row["target ours/floor"] = TARGETS[METHODS[row["method"]][0]]
    columns = ["method", "peer s (median)", "peer s (min)", "ours s (median)", "ours s (min)", "floor s (median)",
               "floor s (min)", "ours/floor", "peer/floor", "peer/ours", "ours/floor cpu", "peer/ours cpu",
               "agreement with peer", "target ours/floor"]
    shown = [{k: (fmt_spread(v) if isinstance(v, dict) else v) for k, v in row.items()} for row in table]
    tokens = statistics.mean(c["tokens"] for c in next(iter(calls.values())))
    cut = f" (cut short: {rounds} of {args.rounds} rounds done)" if rounds < args.rounds else ""
    notes = (f"{len(rows)} prompt(s) of multidoc_qa_dev.jsonl, {args.docs} documents each, {tokens:.0f} tokens on "
             f"average; {rounds} interleaved round(s){cut} (orders: "
             f"{' / '.join(', '.join(o) for o in side_orders(['peer', 'ours', 'floor'], rounds))}). Seconds are "
             "totals over the prompts of one round (median and min over rounds); ratios are per round, median "
             "[min, max]; 'cpu' ratios use the CPU time of each side's own process. Targets: llmlingua <= 1.6x, "
             "longllmlingua <= 2.0x the floor and peer/ours >= 1.2x; selective_context and llmlingua2 <= 1.3x."
             + (f" llmlingua2's classifier: {Path(classifier).name}" + (
                 " (the published BERT-base LLMLingua-2 architecture and config with random weights: the same cost "
                 "per token as the trained one, meaningless outputs; no agreement column: the peer returns re-joined "
                 "lowercased words, ours the original text, and llmlingua2_parity.py measures that parity)"
                 if "random" in Path(classifier).name else "") + "."
                if classifier and any(METHODS[n][0] == "llmlingua2" for n in calls) else ""))
    write_results(args.out, "Hard methods side by side: llmlingua 0.2.2 (peer), ours and one forward pass (floor)",
                  shown, columns=columns, notes=notes,
                  extra={"table": table, "calls": {n: [{k: v for k, v in c.items() if not k.endswith("_text")}
                                                       for c in cs] for n, cs in calls.items()},
                         "peer": "llmlingua 0.2.2 (../shared/peer/llmlingua_reference.py's environment)" if with_peer
                         else None, "rounds": rounds, "rounds_asked": args.rounds, "rows": len(rows),
                         "docs": args.docs, "classifier": classifier})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3, help="prompts to time")
    ap.add_argument("--docs", type=int, default=10, help="documents per prompt (the first N of the 10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for the issue's comparison)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of: {', '.join(METHODS)}")
    ap.add_argument("--no-peer", action="store_true", help="skip the published package")
    ap.add_argument("--classifier", default=None,
                    help="llmlingua2's token classifier folder (default: the published BERT-base architecture with "
                         "random weights, built once by llmlingua2_classifiers.py into the mmcompress cache)")
    add_common_args(ap, str(RESULTS / "hard_speed"))
    args = ap.parse_args(argv)
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in METHODS]
    if unknown or args.rounds < 1 or args.rows < 1:
        print(f"error: unknown method(s) {unknown} (known: {', '.join(METHODS)})" if unknown else
              "error: --rounds and --rows must be >= 1", file=sys.stderr)
        return 2
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    apply_common_args(args)
    import torch

    from mmcompress import Prompt, create_compressor
    from mmcompress.models import load_language_model
    from mmcompress.scoring import CausalLMScorer

    rows = [json.loads(line) for line in DATA.open()][: args.rows]
    rows = [dict(r, documents=r["documents"][: args.docs]) for r in rows]
    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    scorer = CausalLMScorer(lm.model, lm.tokenizer, start_token=None)
    classifier = args.classifier
    if classifier is None and any(METHODS[n][0] == "llmlingua2" for n in names):
        from llmlingua2_classifiers import build_published_bert_random

        from mmcompress.models.loading import cache_dir

        classifier = str(build_published_bert_random(cache_dir() / "llmlingua2-speed"))
    compressors = {}
    for name in names:
        method, overrides, _, _ = METHODS[name]
        kw = dict(classifier=classifier) if method == "llmlingua2" else dict(model=lm.model, tokenizer=lm.tokenizer)
        compressors[name] = create_compressor(method, **kw, **overrides)
    # one worker per model the peer runs: SmolLM2 for the LLMLingua family, the classifier for llmlingua2
    kinds = {"llmlingua2" if METHODS[n][0] == "llmlingua2" else "lm" for n in compressors if METHODS[n][3]}
    why = peer_available() if kinds and not args.no_peer else "--no-peer" if kinds else None
    if why:
        print(f"peer skipped: {why}")
    peers = {} if why else {kind: PeerProcess(threads=torch.get_num_threads(), model=classifier,
                                              llmlingua2=True) if kind == "llmlingua2"
                            else PeerProcess(threads=torch.get_num_threads()) for kind in sorted(kinds)}
    peer_of = {n: peers.get("llmlingua2" if METHODS[n][0] == "llmlingua2" else "lm") for n in compressors}
    agree = agreement_fn(lm.tokenizer) if peers else None
    prompts = [Prompt.from_documents(r["documents"], instruction=INSTRUCTION, question=r["question"]) for r in rows]
    # one untimed call of each side: first-call costs (allocations, lazy imports) are not the method's
    small = [d[:300] for d in rows[0]["documents"][:3]]
    scorer.token_nll([scorer.tokenize([prompts[0].text])[0][0][:64]])
    for name, c in compressors.items():
        c.compress(Prompt.from_documents(small, instruction=INSTRUCTION, question=rows[0]["question"]),
                   rate=METHODS[name][2])
        if peer_of[name] and METHODS[name][3]:
            peer_of[name].compress(small, rows[0]["question"], METHODS[name][3])

    calls: dict[str, list[dict]] = {n: [] for n in compressors}
    try:
        for r in range(args.rounds):
            for row, prompt in zip(rows, prompts):
                ids = scorer.tokenize([prompt.text])[0][0]
                for name, c in compressors.items():
                    method, _, rate, setting = METHODS[name]
                    peer = peer_of[name]
                    sides = ["peer", "ours", "floor"] if peer and setting else ["ours", "floor"]
                    run = {"ours": lambda: c.compress(prompt, rate=rate),
                           "floor": classifier_floor(c, row["documents"]) if method == "llmlingua2"
                           else (lambda: scorer.token_nll([ids]))}
                    call = {"round": r, "id": row["id"], "tokens": len(ids), "order": side_orders(sides, args.rounds)[r]}
                    for side in call["order"]:
                        if side == "peer":
                            reply = peer.compress(row["documents"], row["question"], setting)
                            call["peer"] = ({"s": reply["seconds"], "cpu_s": reply["cpu_seconds"]}
                                            if "seconds" in reply else {"failed": reply["failed"]})
                            call["peer_text"] = reply.get("compressed_prompt")
                        else:
                            s, cpu, out = timed(run[side])
                            call[side] = {"s": s, "cpu_s": cpu}
                            if side == "ours":
                                call["ours_text"] = out.text
                    # llmlingua2: the peer returns re-joined (lowercased) words without the instruction and question,
                    # ours the original spans of the whole prompt; its parity is llmlingua2_parity.py's
                    if agree and call.get("peer_text") is not None and method != "llmlingua2":
                        call["agreement"] = agree(call["peer_text"], call["ours_text"])
                    calls[name].append(call)
                    print(json.dumps({k: v for k, v in call.items() if not k.endswith("_text")}), flush=True)
            # written after every round: a run cut short still leaves the rounds it finished
            report(args, calls, r + 1, rows, classifier, bool(peers))
    finally:
        for peer in peers.values():
            peer.close()
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
