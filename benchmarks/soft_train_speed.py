"""Soft training-step speed at 4x, old path against new path, side by side in one run: seconds per step and model
FLOPs utilisation against the bfloat16 matmul peak this same process measures.

Paths (same model, same batch of windows, same 4x ratio, autoencoding loss on the labelled positions only):

- ``old``: what the soft recipes trained with before: ``kv`` (500xCompressor, K memory slots appended to each
  window), float32 master weights under ``torch.autocast(bfloat16)``, PyTorch's fused SDPA attention;
- ``kv-new``: the same method with the base model's weights stored in bfloat16 (no per-step weight casts; the LoRA
  adapter stays float32 as peft keeps it) and plain matmul ("eager") attention, whose backward is far cheaper on CPU
  than the fused flash kernel at these lengths;
- ``meanpool-new``: the new path with mean-pooling (:mod:`mmcompress.soft.meanpool`): no slots, so the encoder reads
  ``window`` tokens instead of ``window + K``;
- ``meanpool-compiled``: each layer under ``torch.compile`` (the trainer's ``compile: layers``), and
  ``meanpool-compiled-int8``: with the frozen layers' matmuls in int8 as well (``frozen_matmuls: int8``), the step
  the shipped QA recipe runs.

Every path but ``old`` (and the ``*-sliced`` ones, kept to measure the difference) computes the loss with the LM head
and the cross-entropy fused over chunks of the labelled rows (``SlotModel.lm_loss = "chunked"``, the trainer's
default); ``old`` with the labelled rows' logits at once, as it trained. Results before
``soft_train_speed_chunked_loss`` (2026-12-08) ran every path with the latter.

Rounds alternate the order of the paths (old, new, ..., then reversed) so a loaded machine slows them alike; the
table reports the median over rounds. MFU counts ``4 N`` FLOPs per token for the frozen base (forward ``2N`` plus
the input-gradient half of the backward; frozen weights get no weight gradient) over the encoder's and the
decoder's tokens, plus the LM head over the labelled rows, divided by the bfloat16 peak measured here.

The matmul floor (``matmul_floor_s``) is what the step's matmuls alone take at the model's own shapes (every linear
of every layer, forward and input gradient, over the encoder's and the decoder's token counts, and the LM head over
the labelled rows): best of 5 timings of bare bfloat16 matmuls, no norms, attention, adapters or autograd. No path
can be faster than it, so ``old`` over it is the largest speed-up any change outside the matmul kernels can give,
and its MFU is the ceiling at these shapes (measured minutes after the peak: where the machine's speed moves within a
run, compare the seconds, not the two MFUs). ``int8_matmul_floor_s`` is the same with the layers' products in int8
(``torch._int_mm``, what the ``*-int8`` paths run): the floor of a path whose layers multiply in int8. An int8 path
can pass the bfloat16 peak (MFU above 1 where this CPU's int8 matmuls are several times its bfloat16 ones);
``own_floor_share`` is the share of its step that the floor of the matmuls it runs (int8 or not) accounts for.

    PYTHONPATH=. python benchmarks/soft_train_speed.py --threads 2 --rounds 3
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch

from common import add_common_args, apply_common_args, write_results

PATHS = {
    "old": {"method": "kv", "dtype": "float32", "attn": "sdpa", "autocast": True, "loss": "sliced"},
    "kv-new": {"method": "kv", "dtype": "bfloat16", "attn": "eager", "autocast": False},
    "meanpool-new": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False},
    # meanpool-new with each decoder layer under torch.compile (inductor's C++ kernels fuse the elementwise work;
    # the trainer's `compile: layers`); compiling takes minutes on 2 cores, paid in the warm-up step
    "meanpool-compiled": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                          "compile_layers": True},
    # not in the default set: meanpool-compiled as it compiled before the layers shared one graph (each layer traced
    # and compiled apart: minutes of warm-up, and a guard check over every layer's version at each call)
    "meanpool-compiled-per-layer": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                                    "compile_layers": True, "share_graphs": False},
    # not in the default set: meanpool-new with PyTorch's SDPA attention, whose gradients in bfloat16 stay near
    # float32's where eager attention's do not (benchmarks/soft_grad_precision.py)
    "meanpool-new-sdpa": {"method": "meanpool", "dtype": "bfloat16", "attn": "sdpa", "autocast": False},
    # not in the default set: meanpool-new with the LoRA adapter in bfloat16 too (no float32 casts of the
    # activations around every adapter; bfloat16 optimizer updates), the "bf16 end to end" lever
    "meanpool-bf16-lora": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                           "adapter_dtype": "bfloat16"},
    # not in the default set: both levers together (compiled layers, adapter in bfloat16)
    "meanpool-compiled-bf16-lora": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                                    "compile_layers": True, "adapter_dtype": "bfloat16"},
    # not in the default sets: the compiled paths with the frozen layers' matmuls in int8 (SwitchBack,
    # mmcompress/models/switchback.py; the trainer's `frozen_matmuls: int8`)
    "meanpool-compiled-int8": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                               "compile_layers": True, "frozen_matmuls": "int8"},
    "meanpool-compiled-bf16-lora-int8": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager",
                                         "autocast": False, "compile_layers": True, "adapter_dtype": "bfloat16",
                                         "frozen_matmuls": "int8"},
    # not in the default sets: the compiled int8 path with PyTorch's SDPA attention, whose gradients stay near
    # float32's where eager attention's, compiled with int8 matmuls, do not (benchmarks/soft_grad_precision.py)
    "meanpool-compiled-int8-sdpa": {"method": "meanpool", "dtype": "bfloat16", "attn": "sdpa", "autocast": False,
                                    "compile_layers": True, "frozen_matmuls": "int8"},
    # not in the default sets: the compiled int8 path with the model's eager attention run in float32
    # (mmcompress/models/attention.py), whose gradients also stay near float32's
    "meanpool-compiled-int8-fp32-attention": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager_float32",
                                              "autocast": False, "compile_layers": True, "frozen_matmuls": "int8"},
    # not in the default sets: paths with the loss that trained before 2026-12-08 (the labelled rows' float32 logits
    # at once, SlotModel.lm_loss "sliced") instead of the chunked, fused LM head + cross-entropy every other path runs
    "meanpool-compiled-sliced": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                                 "compile_layers": True, "loss": "sliced"},
    "meanpool-compiled-int8-sliced": {"method": "meanpool", "dtype": "bfloat16", "attn": "eager", "autocast": False,
                                      "compile_layers": True, "frozen_matmuls": "int8", "loss": "sliced"},
}
# the paths of the committed default run (soft_train_speed.md, docs/soft.md's first table); later runs name theirs
DEFAULT_PATHS = ("old", "kv-new", "meanpool-new", "meanpool-compiled")


def measured_peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """The best of ``trials`` timings of ``repeats`` square matmuls (one alone varied 2x between runs here)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 * repeats / best


def step_flops(llm, batch: dict, slots_per_chunk: int) -> float:
    """Model FLOPs of one step (frozen base: 4N per token; LM head over the labelled rows)."""
    cfg = llm.config
    n_params = sum(p.numel() for n, p in llm.named_parameters()
                   if "embed" not in n and "lm_head" not in n and "lora_" not in n)
    encoder_tokens, decoder_tokens, labelled = step_tokens(batch, slots_per_chunk)
    return 4 * n_params * (encoder_tokens + decoder_tokens) + 4 * cfg.vocab_size * cfg.hidden_size * labelled


def step_tokens(batch: dict, slots_per_chunk: int) -> tuple[int, int, int]:
    """Encoder tokens, decoder tokens and labelled rows of one step. The decoder's layers run on each row's marker
    and tail only: the soft prompt before them is its cache, made by the encoder (whose tokens count it), and costs
    the decoder attention alone, which the 4N count leaves out. (Results before 2026-12-07's
    ``soft_train_speed_mfu`` also counted ``window / 4`` prefix positions per row here: 128 of the
    1,160 tokens of a meanpool step, so their FLOPs, MFU and matmul floors read about 10% high.)"""
    chunks = batch["chunk_ids"].shape[0]
    encoder_tokens = int(batch["chunk_mask"].sum()) + chunks * slots_per_chunk
    decoder_tokens = int(batch["tail_mask"].sum()) + batch["tail_ids"].shape[0]  # + the task marker
    return encoder_tokens, decoder_tokens, int((batch["labels"] != -100).sum())


def matmul_floor_seconds(llm, tokens: tuple[int, int, int], trials: int = 5, int8: bool = False) -> float:
    """Seconds of the step's bare matmuls at the model's shapes (forward + input gradient): bfloat16, or with the
    layers' matmuls in int8 (``int8``, what SwitchBack runs; the LM head stays bfloat16 there too)."""
    from torch import nn

    layers = llm.get_decoder().layers if hasattr(llm, "get_decoder") else llm.model.layers
    shapes = [(m.in_features, m.out_features) for n, m in layers[0].named_modules()
              if isinstance(m, nn.Linear) and "lora_" not in n]  # the base weights (peft keeps them as base_layer)
    cfg = llm.config
    encoder_tokens, decoder_tokens, labelled = tokens
    work = [(t, i, o, len(layers), int8) for t in (encoder_tokens, decoder_tokens) for i, o in shapes]
    work.append((labelled, cfg.hidden_size, cfg.vocab_size, 1, False))
    total = 0.0
    for t, i, o, times, in_int8 in work:
        if in_int8:  # both operands of each product laid out as SwitchBack keeps them
            x, w, g, w_t = (torch.randint(-127, 128, shape, dtype=torch.int8)
                            for shape in ((t, i), (i, o), (t, o), (o, i)))
            forward, backward = functools.partial(torch._int_mm, x, w), functools.partial(torch._int_mm, g, w_t)
        else:
            x, w, g = (torch.randn(shape, dtype=torch.bfloat16) for shape in ((t, i), (i, o), (t, o)))
            forward, backward = functools.partial(torch.matmul, x, w), functools.partial(torch.matmul, g, w.T)
        forward(), backward()  # first calls build the kernels for these shapes
        best = float("inf")
        for _ in range(trials):
            t0 = time.perf_counter()
            forward()
            backward()
            best = min(best, time.perf_counter() - t0)
        total += best * times
    return total


def build(path: dict, args):
    from mmcompress import create_compressor
    from mmcompress.models.compile import compile_blocks
    from mmcompress.models.switchback import int8_frozen_linears

    from mmcompress.soft.kv import KvConfig

    sizes = {"pool_ratio": 4} if path["method"] == "meanpool" else {"num_slots": args.window // 4}
    if path["method"] == "kv":  # the variant the recipes trained (left-padded chunks, prefix positions, learned
        sizes.update(KvConfig.MMCOMPRESS_VARIANT)  # markers), which the batches below are built for
    c = create_compressor(path["method"], model=args.model, device="cpu", dtype=path["dtype"],
                          chunk_tokens=args.window, lora_r=args.lora_r, lora_alpha=args.lora_r, **sizes)
    c.llm.set_attn_implementation(path["attn"])
    if path.get("frozen_matmuls") == "int8":  # before compiling, as the trainer does
        int8_frozen_linears(c.module)
    if path.get("compile_layers"):  # per layer, not the whole step: the step switches adapters and graph-breaks
        compile_blocks(c.module, share_graphs=path.get("share_graphs", True))
    module = c.module
    module.lm_loss = path.get("loss", "chunked")
    if path.get("adapter_dtype"):
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.to(getattr(torch, path["adapter_dtype"]))
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    return c, module, optimizer


def timed_step(module, optimizer, batch, autocast: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module.training_step(batch)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, float(out["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per path, in alternating order")
    ap.add_argument("--text", default="../shared/data/corpus_wiki_news.txt")
    ap.add_argument("--cold-compile", action="store_true",
                    help="compile into a fresh, empty inductor cache (a first run's warm-up) instead of the user's")
    add_common_args(ap, "benchmarks/results/soft_train_speed")
    args = ap.parse_args()
    apply_common_args(args)
    if args.cold_compile:  # read when inductor first compiles, so setting it here is in time
        import atexit
        import os
        import shutil
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold = tempfile.mkdtemp(prefix="inductor-cold-")
        atexit.register(shutil.rmtree, cold, ignore_errors=True)

    from mmcompress.soft.losses import collate
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    names = args.paths.split(",")
    peak = measured_peak_flops(torch.bfloat16)
    built = {name: build(PATHS[name], args) for name in names}
    tok = next(iter(built.values()))[0].tokenizer
    data = {**DATA_DEFAULTS, "text": args.text, "context_tokens": args.window,
            "max_train_examples": args.batch_size * (args.rounds + 1)}
    train, _ = build_datasets(data, tok, tok.eos_token_id)
    batches = [collate([train[(i * args.batch_size + j) % len(train)] for j in range(args.batch_size)], args.window,
                       tok.pad_token_id) for i in range(args.rounds + 1)]
    warmup = {}
    for name in names:  # one warm-up step each (allocator, kernels, compilation) before any timing
        _, module, opt = built[name]
        warmup[name] = timed_step(module, opt, batches[0], PATHS[name]["autocast"])[0]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}  # a fast path must also compute the same thing
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            _, module, opt = built[name]
            s, loss = timed_step(module, opt, batches[r + 1], PATHS[name]["autocast"])
            seconds[name].append(s)
            losses[name].append(loss)
            print(f"round {r} {name}: {s:.2f} s (loss {loss:.3f})", flush=True)
    rows = []
    base = statistics.median(seconds[names[0]])
    for name in names:
        c, module, _ = built[name]
        path = PATHS[name]
        slots = 0 if path["method"] == "meanpool" else args.window // 4
        flops = statistics.mean(step_flops(c.llm, b, slots) for b in batches[1:])
        tokens = step_tokens(batches[1], slots)
        floor = matmul_floor_seconds(c.llm, tokens)
        int8_floor = matmul_floor_seconds(c.llm, tokens, int8=True)
        median = statistics.median(seconds[name])
        rows.append({"path": name, "method": path["method"], "weights": path["dtype"],
                     "adapter": path.get("adapter_dtype", "float32"),  # peft keeps adapters in float32
                     "frozen_matmuls": path.get("frozen_matmuls", "native"),
                     "attention": path["attn"], "loss": path.get("loss", "chunked"),
                     "autocast": path["autocast"], "warmup_s": warmup[name], "s_per_step": median, "min_s": min(seconds[name]),
                     "max_s": max(seconds[name]), "model_tflop_per_step": flops / 1e12,
                     "mfu_vs_bf16_peak": flops / median / peak, "speedup_vs_old": base / median,
                     "matmul_floor_s": floor, "floor_mfu": flops / floor / peak, "old_over_floor": base / floor,
                     "int8_matmul_floor_s": int8_floor, "old_over_int8_floor": base / int8_floor,
                     "own_floor_share": (int8_floor if path.get("frozen_matmuls") == "int8" else floor) / median,
                     "losses_finite": all(math.isfinite(x) for x in losses[name])})
    notes = (f"bfloat16 matmul peak measured in this process: {peak / 1e12:.3f} TFLOP/s. Batch {args.batch_size} "
             f"windows of {args.window} tokens at 4x, LoRA r={args.lora_r}; median of {args.rounds} alternating rounds.")
    print(write_results(args.out, "Soft training step at 4x: old path vs new path", rows, notes=notes,
                        extra={"peak_bf16_tflops": peak / 1e12, "seconds": seconds, "losses": losses})["rows"])


if __name__ == "__main__":
    main()
