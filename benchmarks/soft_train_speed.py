"""Training-step speed of the soft compressors (icae, kv): steps/s and model-FLOPs utilisation, before and after
the trainer optimisations, side by side in one run.

Variants (same data, same model, same batch):
- ``full-logits``: the unoptimised loss, full-vocabulary float32 logits at every decoder position (what a plain
  HF ``labels=`` forward does), then the masked loss;
- ``sliced``: hidden states sliced to the labelled positions before the LM head (the default);
- ``sliced+bf16-autocast`` (``--autocast``): the sliced loss with the step under ``torch.autocast(bfloat16)`` and
  float32 master weights (what ``benchmarks/soft_reconstruction_curve.py --bf16`` trains with); its MFU is against
  the measured bfloat16 matmul peak (AMX on recent Xeons, tensor cores on GPUs).

MFU = model FLOPs per second / measured peak. Model FLOPs per step use the usual ``6 * N * tokens`` (forward +
backward) over the encoder and decoder tokens of the step, N = non-embedding parameters, plus the LM-head FLOPs the
loss needs (``6 * V * D`` per labelled position). The peak is measured in the same process (dense float32/bf16
matmuls), so the MFU is relative to what this machine actually delivers.

    PYTHONPATH=. python benchmarks/soft_train_speed.py --model smollm2-135m --batch-size 2 --steps 2
    PYTHONPATH=. python benchmarks/soft_train_speed.py --model smollm2-135m --device cuda --dtype bfloat16 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)


def measured_peak_flops(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_flops(module, batch, chunk_tokens: int, num_slots: int, sliced: bool) -> float:
    llm = module.encoder.llm
    cfg = llm.config
    n_params = sum(p.numel() for n, p in llm.named_parameters() if "embed" not in n and "lm_head" not in n)
    enc_tokens = int(batch["chunk_ids"].numel()) + batch["chunk_ids"].shape[0] * num_slots
    dec_tokens = int(batch["tail_ids"].numel()) + batch["chunk_ids"].shape[0] * num_slots + batch["tail_ids"].shape[0]
    labelled = int((batch["labels"] != -100).sum())
    head_rows = labelled if sliced else dec_tokens
    return 6 * n_params * (enc_tokens + dec_tokens) + 6 * cfg.vocab_size * cfg.hidden_size * head_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="icae,kv")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--num-slots", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one shared warm-up step)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--autocast", action="store_true", help="add the sliced+bf16-autocast variant")
    ap.add_argument("--text", default="../shared/data/corpus_wiki_news.txt")
    ap.add_argument("--out", default="benchmarks/results/soft_train_speed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mmcompress import create_compressor
    from mmcompress.soft.losses import collate
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    peak = measured_peak_flops(args.device, dtype)
    peak_bf16 = measured_peak_flops(args.device, torch.bfloat16) if args.autocast else None
    rows = []
    for method in args.methods.split(","):
        c = create_compressor(method, model=args.model, device=args.device, dtype=args.dtype,
                              num_slots=args.num_slots, chunk_tokens=args.chunk_tokens)
        tok = c.tokenizer
        data = {**DATA_DEFAULTS, "text": args.text, "context_tokens": args.chunk_tokens,
                "max_train_examples": args.batch_size * (args.steps + 1)}
        train, _ = build_datasets(data, tok, tok.eos_token_id)
        module = c.module
        module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
        batches = [collate([train[(i * args.batch_size + j) % len(train)] for j in range(args.batch_size)],
                           args.chunk_tokens, tok.pad_token_id) for i in range(args.steps + 1)]
        batches = [{k: v.to(args.device) for k, v in b.items()} for b in batches]
        warm = module.training_step(batches[0])  # one warm-up step (allocator, kernels) before any timing
        warm["loss"].backward()
        opt.zero_grad(set_to_none=True)
        variants = ("full-logits", "sliced") + (("sliced+bf16-autocast",) if args.autocast else ())
        for variant in variants:
            module.full_vocab_loss = variant == "full-logits"
            autocast = variant.endswith("bf16-autocast")
            times, losses = [], []
            for i, batch in enumerate(batches):
                if i == 0:
                    continue
                _sync(args.device)
                t0 = time.perf_counter()
                with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                    out = module.training_step(batch)
                out["loss"].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(args.device)
                times.append(time.perf_counter() - t0)
                losses.append(float(out["loss"]))
            seconds = sum(times) / len(times)
            flops = sum(step_flops(module, b, args.chunk_tokens, args.num_slots, variant != "full-logits")
                        for b in batches[1:]) / len(times)
            peak_mem = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
            rows.append({"method": method, "variant": variant, "steps_per_s": 1 / seconds, "seconds_per_step": seconds,
                         "model_tflops_per_step": flops / 1e12, "achieved_tflops": flops / seconds / 1e12,
                         "mfu": flops / seconds / (peak_bf16 if autocast else peak), "loss": sum(losses) / len(losses),
                         "peak_gib": peak_mem})
            print(json.dumps(rows[-1]), flush=True)
            write(args, peak, rows, peak_bf16)  # partial results survive a time limit
        module.full_vocab_loss = False
        del c, module, opt
    print(write(args, peak, rows, peak_bf16))


def write(args, peak: float, rows: list[dict], peak_bf16: float | None = None) -> str:
    for method in args.methods.split(","):
        full = next((r for r in rows if r["method"] == method and r["variant"] == "full-logits"), None)
        fast = next((r for r in rows if r["method"] == method and r["variant"] == "sliced"), None)
        if full and fast:
            for r in rows:
                if r["method"] == method and r["variant"] != "full-logits":
                    r["speedup_vs_full_logits"] = r["steps_per_s"] / full["steps_per_s"]
    machine = f"{machine_line()}, device {args.device}"
    result = {"args": vars(args), "machine": machine, "measured_peak_tflops": peak / 1e12,
              "measured_peak_bf16_tflops": peak_bf16 / 1e12 if peak_bf16 else None, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Soft training-step speed ({args.model}, {args.chunk_tokens} tokens -> {args.num_slots} slots, "
             f"batch {args.batch_size}, {args.dtype})", "",
             f"Machine: {machine}; measured matmul peak {peak / 1e12:.3f} TFLOP/s ({args.dtype})"
             + (f", {peak_bf16 / 1e12:.3f} TFLOP/s (bfloat16, the MFU base of the autocast rows)" if peak_bf16 else "")
             + ". Command: "
             f"`PYTHONPATH=. python benchmarks/soft_train_speed.py --model {args.model} --device {args.device} "
             f"--dtype {args.dtype} --batch-size {args.batch_size} --steps {args.steps} --methods {args.methods}"
             + (f" --threads {args.threads}" if args.threads else "") + (" --autocast" if args.autocast else "") + "`", "",
             "| method | variant | steps/s | s/step | TFLOP/step | MFU | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['variant']} | {r['steps_per_s']:.4f} | {r['seconds_per_step']:.2f} | "
                     f"{r['model_tflops_per_step']:.3f} | {r['mfu']:.3f} | {r.get('speedup_vs_full_logits', 1.0):.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
