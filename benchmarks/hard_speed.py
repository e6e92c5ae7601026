"""Speed of the hard methods against the floor (one forward pass of the same scorer over the same tokens) and
against the published llmlingua 0.2.2 running the same settings, in one run on one machine.

    PYTHONPATH=. python benchmarks/hard_speed.py [--rows 3] [--no-reference]

For each multi-document prompt of ``../shared/data/multidoc_qa_dev.jsonl`` (10 documents, about 1,700 SmolLM2
tokens) it times: the floor (``CausalLMScorer.token_nll`` over the whole prompt, batched, LM head included), each
method's ``compress`` call, and, through ``../shared/peer/llmlingua_reference.py run`` (its own virtual environment
with transformers 4.44), the published package's call for ``llmlingua`` (rate 0.5) and ``longllmlingua`` (rate 0.4,
the LongLLMLingua settings). Ratios are seconds / floor seconds of the same prompt, averaged over prompts.
Writes benchmarks/results/hard_speed.{json,md}. CPU targets (issue 3): llmlingua <= 2.0x, longllmlingua <= 2.6x,
selective_context and llmlingua2 <= 1.3x.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
REFERENCE = SHARED / "peer" / "llmlingua_reference.py"
RESULTS = REPO / "benchmarks" / "results"
INSTRUCTION = "Answer the question using the documents."
TARGETS = {"selective_context": 1.3, "llmlingua": 2.0, "longllmlingua": 2.6, "llmlingua2": 1.3}
METHODS = {  # name: (registered method, config overrides, compress kwargs, the reference setting with the same kwargs)
    "selective_context": ("selective_context", {}, dict(rate=0.5), None),
    "llmlingua": ("llmlingua", {}, dict(rate=0.5), "llmlingua"),
    "llmlingua first_pass=full": ("llmlingua", dict(first_pass="full"), dict(rate=0.5), "llmlingua"),
    "longllmlingua": ("longllmlingua", {}, dict(rate=0.4), "longllmlingua"),
    "longllmlingua first_pass=full": ("longllmlingua", dict(first_pass="full"), dict(rate=0.4), "longllmlingua"),
    "llmlingua2": ("llmlingua2", {}, dict(rate=0.5), None),
}


def floor_seconds(scorer, text: str) -> float:
    ids = scorer.tokenize([text])[0][0]
    t0 = time.perf_counter()
    scorer.token_nll([ids])
    return time.perf_counter() - t0


def classifier_floor_seconds(compressor, documents: list[str]) -> float:
    """LLMLingua-2's own floor: one batched pass of its token classifier over the tokens it classifies (the
    documents, each cut at the encoder's limit)."""
    scorer = compressor.scorer
    step = scorer.chunk_tokens
    chunks = [tk.ids[i : i + step] for tk in scorer.tokenize(documents) for i in range(0, len(tk.ids), step)]
    t0 = time.perf_counter()
    scorer.token_probs(chunks)
    return time.perf_counter() - t0


def reference_seconds(rows, limit) -> dict[tuple[str, str], float]:
    """Seconds of llmlingua 0.2.2's calls per (row id, setting), from its own environment."""
    venv = Path(os.environ.get("MMCOMPRESS_PEER_CACHE", Path.home() / ".cache" / "mmcompress-peer")) / "venv"
    if not (venv / "bin" / "python").exists():
        print(f"reference skipped: run `python {REFERENCE} setup` first ({venv} is absent)")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        subprocess.run([sys.executable, str(REFERENCE), "run", str(inp), str(out), "--limit", str(limit)], check=True)
        return {(r["id"], r["setting"]): r["seconds"] for r in map(json.loads, out.open())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3, help="prompts to time")
    ap.add_argument("--docs", type=int, default=10, help="documents per prompt (the first N of the 10)")
    ap.add_argument("--no-reference", action="store_true", help="skip the published package")
    ap.add_argument("--out", default=str(RESULTS / "hard_speed"))
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    import torch

    from mmcompress import Prompt, create_compressor, list_compressors
    from mmcompress.models import load_language_model
    from mmcompress.scoring import CausalLMScorer

    rows = [json.loads(line) for line in DATA.open()][: args.rows]
    rows = [dict(r, documents=r["documents"][: args.docs]) for r in rows]
    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    scorer = CausalLMScorer(lm.model, lm.tokenizer, start_token=None)
    compressors = {}
    for name, (method, overrides, _, _) in METHODS.items():
        if method not in list_compressors():
            continue
        try:
            kw = {} if method == "llmlingua2" else dict(model=lm.model, tokenizer=lm.tokenizer)
            compressors[name] = create_compressor(method, **kw, **overrides)
        except Exception as e:  # noqa: BLE001  (llmlingua2 needs its trained classifier)
            print(f"{name} skipped: {e}")
    prompts = [Prompt.from_documents(r["documents"], instruction=INSTRUCTION, question=r["question"]) for r in rows]
    warm = prompts[0]  # one untimed call each: first-call costs (allocations, lazy imports) are not the method's
    scorer.token_nll([scorer.tokenize([warm.text])[0][0][:64]])
    for c in compressors.values():
        c.compress(Prompt.from_documents([d[:300] for d in rows[0]["documents"][:3]], instruction=INSTRUCTION,
                                         question=rows[0]["question"]))
    per_row = []
    torch.set_num_threads(torch.get_num_threads())
    for row, prompt in zip(rows, prompts):
        entry = {"id": row["id"], "tokens": len(scorer.tokenize([prompt.text])[0][0])}
        floors = [floor_seconds(scorer, prompt.text)]
        own_floors = []
        for name, c in compressors.items():
            kwargs = METHODS[name][2]
            if METHODS[name][0] == "llmlingua2":  # its floor is its own encoder's pass, timed next to it
                own_floors.append(classifier_floor_seconds(c, row["documents"]))
            t0 = time.perf_counter()
            c.compress(prompt, **kwargs)
            entry[name] = time.perf_counter() - t0
            if METHODS[name][0] == "llmlingua2":
                own_floors.append(classifier_floor_seconds(c, row["documents"]))
                entry["floor llmlingua2"] = sum(own_floors) / len(own_floors)
        floors.append(floor_seconds(scorer, prompt.text))  # before and after: the floor follows the load
        entry["floor"] = sum(floors) / len(floors)
        per_row.append(entry)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in entry.items()}), flush=True)
    ref = {} if args.no_reference else reference_seconds(rows, len(rows))
    if ref:  # re-measure the floor right after the reference ran, so both see the same machine state
        for row, prompt, entry in zip(rows, prompts, per_row):
            entry["floor_after_reference"] = floor_seconds(scorer, prompt.text)
    table = []
    for name in compressors:
        floor_key = "floor llmlingua2" if METHODS[name][0] == "llmlingua2" else "floor"
        ratios = [e[name] / e[floor_key] for e in per_row]
        ref_setting = METHODS[name][3]
        ref_ratios = [ref[(e["id"], ref_setting)] / e.get("floor_after_reference", e["floor"])
                      for e in per_row if ref_setting and (e["id"], ref_setting) in ref]
        table.append({
            "method": name, "ours_s": sum(e[name] for e in per_row) / len(per_row),
            "floor_s": sum(e[floor_key] for e in per_row) / len(per_row), "floor": floor_key,
            "ours_x_floor": sum(ratios) / len(ratios),
            "reference_x_floor": sum(ref_ratios) / len(ref_ratios) if ref_ratios else None,
            "target_x_floor": TARGETS[METHODS[name][0]],
        })
    machine = machine_line()
    summary = {"command": "PYTHONPATH=. python benchmarks/hard_speed.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine, "rows": len(rows), "per_row": per_row, "table": table,
               "gpu": "not measured (no GPU this session)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"# Hard methods: seconds per prompt / one forward pass over the same tokens ({machine})", "",
             f"Command: `{summary['command']}`; {len(rows)} prompt(s) of multidoc_qa_dev.jsonl, {args.docs} documents "
             f"each, {sum(e['tokens'] for e in per_row) / len(per_row):.0f} tokens on average.", "",
             "| method | ours (s) | floor (s) | ours / floor | llmlingua 0.2.2 / floor | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in table:
        lines.append(f"| {t['method']} | {fmt(t['ours_s'])} | {fmt(t['floor_s'])} | {fmt(t['ours_x_floor'])}x | "
                     f"{fmt(t['reference_x_floor'])}{'x' if t['reference_x_floor'] else ''} | <= {t['target_x_floor']}x |")
    lines += ["", "The floor is one batched forward pass of SmolLM2-135M over the prompt (LM head included); for llmlingua2 "
              "it is its own token classifier over the documents it classifies, each cut at the encoder's limit.",
              "", "GPU targets (1B Llama, 2k/8k tokens): not measured (no GPU this session)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
