"""Where LLMLingua's and LongLLMLingua's time goes beyond the forward passes: ``torch.profiler`` over their defaults.

    PYTHONPATH=. python benchmarks/hard_profile.py [--rows 1] [--threads 1]

For each of the first ``--rows`` multi-document prompts (SmolLM2-135M, float32, CPU) it profiles one ``compress``
call of each method and one floor pass (``CausalLMScorer.token_nll`` over the whole prompt) and splits the CPU time
of the profiled operators, as shares of the call's time, into: matrix products (``aten::mm``/``addmm``/``bmm``: the layers and the LM head),
attention (``scaled_dot_product_attention``), the loss over the vocabulary (``log_softmax``/``nll_loss``), cache
copies (``aten::cat``/``copy_``: the KV cache grows by concatenation), other tensor operators, and the time no
operator accounts for (tokenisation, Python loops, numpy). It also counts the tokens each call fed to the model
(ranking pass + iterative step) against the prompt's. Writes benchmarks/results/hard_profile.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from common import add_common_args, apply_common_args, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from llmlingua_peer import SHARED  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
INSTRUCTION = "Answer the question using the documents."
METHODS = {"llmlingua": 0.5, "longllmlingua": 0.4}
GROUPS = {  # profiler operator -> group (self CPU time)
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention"),
    "vocabulary loss": ("aten::_log_softmax", "aten::nll_loss_forward", "aten::nll_loss2d_forward"),
    "cache copies": ("aten::cat", "aten::copy_"),
}


def profile_call(fn) -> tuple[dict, float, object]:
    """Share (%) of the call's wall time per group, the call's CPU seconds (this process), and its result.

    The profiler times operators by the clock, so on a shared machine they include waits; shares of the wall time
    stay comparable (a wait falls on whatever runs), seconds would not."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    groups = {g: 0.0 for g in GROUPS}
    ops = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        ops += seconds
        for g, names in GROUPS.items():
            if event.key in names:
                groups[g] += seconds
    groups["other operators"] = ops - sum(groups.values())
    groups["outside operators"] = max(0.0, wall - ops)
    return {g: 100 * v / wall for g, v in groups.items()}, cpu, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1)
    add_common_args(ap, str(REPO / "benchmarks" / "results" / "hard_profile"))
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    apply_common_args(args)
    from mmcompress import Prompt, create_compressor
    from mmcompress.models import load_language_model
    from mmcompress.scoring import CausalLMScorer

    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    scorer = CausalLMScorer(lm.model, lm.tokenizer, start_token=None)
    rows = [json.loads(line) for line in DATA.open()][: args.rows]
    compressors = {m: create_compressor(m, model=lm.model, tokenizer=lm.tokenizer) for m in METHODS}
    warm = Prompt.from_documents([d[:300] for d in rows[0]["documents"][:3]], instruction=INSTRUCTION,
                                 question=rows[0]["question"])
    for m, c in compressors.items():
        c.compress(warm, rate=METHODS[m])
    table = []
    for row in rows:
        prompt = Prompt.from_documents(row["documents"], instruction=INSTRUCTION, question=row["question"])
        ids = scorer.tokenize([prompt.text])[0][0]
        calls = {"floor": lambda: scorer.token_nll([ids])}
        calls.update({m: (lambda c=c, m=m: c.compress(prompt, rate=METHODS[m])) for m, c in compressors.items()})
        for name, fn in calls.items():
            groups, cpu, out = profile_call(fn)
            entry = {"id": row["id"], "side": name, "prompt tokens": len(ids), "cpu s": cpu}
            entry.update({f"{g} %": v for g, v in groups.items()})
            if name != "floor":
                documents = sum(scorer.count_tokens(row["documents"]))
                ranked = documents if name == "llmlingua" else documents + len(row["documents"]) * len(
                    scorer.tokenize([row["question"] + " We can get the answer to this question in the given "
                                     "documents."])[0][0])
                entry["ranking tokens"] = ranked
                entry["iterative tokens"] = out.extras.get("forward_tokens")
                entry["fed / prompt tokens"] = (ranked + entry["iterative tokens"]) / len(ids)
                entry["rank s"] = out.timings.get("rank")
                entry["tokens s"] = out.timings.get("tokens")
            table.append(entry)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)
    notes = ("Share of each call's wall time by operator group (self time, one thread); 'outside operators' is the "
             "time no operator accounts for (tokenisation, Python, numpy); cpu s is the call's CPU time. Ranking tokens: the documents (LongLLMLingua: each "
             "with the question appended); iterative tokens: what the token-level step fed (re-fed kept windows and "
             "the second contrastive stream included).")
    columns = list(dict.fromkeys(k for entry in table for k in entry))  # the floor rows lack the token counts
    write_results(args.out, "LLMLingua / LongLLMLingua profile (torch.profiler, SmolLM2-135M, CPU)", table,
                  columns=columns, notes=notes)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
