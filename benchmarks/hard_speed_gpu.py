"""GPU speed of LLMLingua and LongLLMLingua against the floor, on the issue's setting: a 1B-parameter
Llama-architecture scorer with random weights and 20-document prompts of 2k and 8k tokens.

    PYTHONPATH=. python benchmarks/hard_speed_gpu.py [--tokens 2048,8192] [--docs 20] [--rows 3] [--repeats 3]
        [--size 1b|tiny] [--device cuda] [--tokenizer smollm2-135m | FOLDER] [--data multidoc_qa_dev.jsonl]

Random weights are enough for timing: the methods do the same work whatever the scores are (the ranks and the
kept tokens change, their number does not). The prompts are real text from the multi-document QA file: each of
the ``--docs`` documents is paragraphs of the file joined until it holds ``tokens / docs`` tokens. For each prompt
length it times, after one untimed call of each at that length (CUDA kernels, cuBLAS plans and the allocator warm
up), the floor (one batched forward pass of the scorer over the whole prompt, LM head included) and each method's
``compress`` call; the ratio is the median over ``--repeats`` calls per prompt, averaged over prompts.
Writes benchmarks/results/hard_speed_gpu.{json,md}. Targets (issue 3): llmlingua <= 3x, longllmlingua <= 4x; the
published llmlingua 0.2.2 took 15.7x and 21.7x at 8k tokens on an H100.

On the lent GPU machine (../shared/design/gpu.md) nothing else is needed: the tokenizer is a folder with SmolLM2's
tokenizer files and config.json (a few MB, carried), the data one JSONL file. ``--size tiny --device cpu`` checks the
script end to end on a CPU in a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
INSTRUCTION = "Answer the question using the documents."
TARGETS = {"llmlingua": 3.0, "longllmlingua": 4.0}
PUBLISHED_8K_H100 = {"llmlingua": 15.7, "longllmlingua": 21.7}  # the measurement of llmlingua 0.2.2
METHODS = {  # name: (registered method, config overrides, rate)
    "llmlingua": ("llmlingua", {}, 0.5),
    "llmlingua first_pass=full": ("llmlingua", dict(first_pass="full"), 0.5),
    "longllmlingua": ("longllmlingua", {}, 0.4),
    "longllmlingua first_pass=full": ("longllmlingua", dict(first_pass="full"), 0.4),
}
# Llama-3.2-1B's shape (with the tokenizer's vocabulary); "tiny" checks the script on a CPU
SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def random_llama(size: str, vocab_size: int, max_tokens: int, device: str, dtype):
    """A Llama-architecture causal LM with random (seeded) weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max(8192, 2 * max_tokens),
                         tie_word_embeddings=True, **SIZES[size])
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return model


def build_prompts(data: Path, tokenizer, n_prompts: int, n_docs: int, tokens: int) -> list[tuple[list[str], str]]:
    """``n_prompts`` (documents, question) pairs of ``n_docs`` documents of about ``tokens / n_docs`` tokens each."""
    rows = [json.loads(line) for line in data.open()]
    paragraphs = [d for r in rows for d in r["documents"]]
    per_doc = max(8, tokens // n_docs)
    prompts, cursor = [], 0
    for i in range(n_prompts):
        docs = []
        for _ in range(n_docs):
            ids: list[int] = []
            while len(ids) < per_doc:
                ids += tokenizer(" " + paragraphs[cursor % len(paragraphs)], add_special_tokens=False)["input_ids"]
                cursor += 1
            docs.append(tokenizer.decode(ids[:per_doc]).strip())
        prompts.append((docs, rows[i % len(rows)]["question"]))
    return prompts


def timed(fn, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="2048,8192", help="prompt lengths (SmolLM2 tokens of the documents)")
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--rows", type=int, default=3, help="prompts per length")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per prompt (the median counts)")
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="alias or folder with tokenizer files + config.json")
    ap.add_argument("--data", default=str(SHARED / "data" / "multidoc_qa_dev.jsonl"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(RESULTS / "hard_speed_gpu"))
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"skipped: {args.data} is absent")
        return 0
    import torch
    import transformers

    from mmcompress import Prompt, create_compressor
    from mmcompress.models import load_tokenizer
    from mmcompress.scoring import CausalLMScorer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu --size tiny to check the script)")
        return 2
    lengths = [int(x) for x in args.tokens.split(",")]
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    tokenizer = load_tokenizer(args.tokenizer)
    model = random_llama(args.size, len(tokenizer), max(lengths), args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    scorer = CausalLMScorer(model, tokenizer, start_token=None)
    names = [n for n in args.methods.split(",") if n]
    compressors = {n: create_compressor(METHODS[n][0], model=model, tokenizer=tokenizer, **METHODS[n][1]) for n in names}

    per_prompt = []
    for length in lengths:
        prompts = [Prompt.from_documents(docs, instruction=INSTRUCTION, question=q)
                   for docs, q in build_prompts(Path(args.data), tokenizer, args.rows, args.docs, length)]
        ids = [scorer.tokenize([p.text])[0][0] for p in prompts]
        with torch.inference_mode():  # warm-up at this length, untimed
            scorer.token_nll([ids[0]])
        for n, c in compressors.items():
            c.compress(prompts[0], rate=METHODS[n][2])
        for prompt, prompt_ids in zip(prompts, ids):
            entry = {"length": length, "tokens": len(prompt_ids)}
            with torch.inference_mode():
                entry["floor"] = statistics.median(timed(lambda: scorer.token_nll([prompt_ids]), args.device)
                                                   for _ in range(args.repeats))
            for n, c in compressors.items():
                entry[n] = statistics.median(timed(lambda: c.compress(prompt, rate=METHODS[n][2]), args.device)
                                             for _ in range(args.repeats))
            per_prompt.append(entry)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)

    table = []
    for length in lengths:
        entries = [e for e in per_prompt if e["length"] == length]
        for n in names:
            table.append({"method": n, "length": length, "tokens": statistics.mean(e["tokens"] for e in entries),
                          "ours_s": statistics.mean(e[n] for e in entries),
                          "floor_s": statistics.mean(e["floor"] for e in entries),
                          "ours_x_floor": statistics.mean(e[n] / e["floor"] for e in entries),
                          "target_x_floor": TARGETS[METHODS[n][0]],
                          "published_x_floor_8k_h100": PUBLISHED_8K_H100[METHODS[n][0]]})
    machine = f"{machine_line()}, transformers {transformers.__version__}, {dtype}"
    summary = {"command": "PYTHONPATH=. python benchmarks/hard_speed_gpu.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine, "scorer": f"Llama architecture, {args.size} ({n_params / 1e9:.2f}B parameters), random weights",
               "docs": args.docs, "rows": args.rows, "repeats": args.repeats, "per_prompt": per_prompt, "table": table}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# LLMLingua / LongLLMLingua on a GPU: seconds per prompt / one forward pass over the same tokens", "",
             f"Machine: {machine}. Scorer: {summary['scorer']}. Command: `{summary['command']}`; {args.rows} prompt(s) "
             f"per length, {args.docs} documents each, median of {args.repeats} calls.", "",
             "| method | prompt tokens | ours (s) | floor (s) | ours / floor | target | llmlingua 0.2.2 at 8k (H100) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in table:
        lines.append(f"| {t['method']} | {t['tokens']:.0f} | {t['ours_s']:.3f} | {t['floor_s']:.4f} | "
                     f"{t['ours_x_floor']:.2f}x | <= {t['target_x_floor']}x | {t['published_x_floor_8k_h100']}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
