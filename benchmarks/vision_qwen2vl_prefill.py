"""Prefill of a Qwen2-VL-shaped model (random weights) with every image token vs K, through mmcompress's runner.

Shape: Qwen2-VL-7B widths -- vision tower 1280 wide, 16 heads, patch 14, 2x2 merger into the LLM width; LLM 3584
wide, 28 heads with 4 key/value heads, MLP 18944 -- with the depth cut to ``--text-layers`` / ``--vision-layers``
(the per-layer cost is what the token count changes). A square ``--image-size`` image: 448 px is 32 x 32 patches,
256 LLM tokens. Each row is the median of ``--repeats`` runs after a warm-up round, all in one process, the methods
taken in turn within each repeat (a load that drifts during the run hits them alike):

- ``encode_s``: tower + merger, plus the reduction's own cost (attention recomputed on the last block, the method);
- ``prefill_s``: the LLM forward over the prompt (``--text-tokens`` text tokens + the image tokens), M-RoPE positions
  as the runner builds them, logits of the last position only (what generate() computes first);
- ratios are against the all-token row of the same run.

CPU (this repository's results)::

    nice -n 5 python benchmarks/vision_llava_prefill.py --family qwen2_vl --text-layers 2 --vision-layers 2

GPU, full depth and vocabulary, bf16 (ready to run; not run here)::

    python benchmarks/vision_llava_prefill.py --family qwen2_vl --device cuda --dtype bfloat16 --text-layers 28 \\
        --vision-layers 32 --vocab 152064 --image-size 896 --repeats 5 --out benchmarks/results/vision_qwen2vl_prefill_gpu
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch

from common import write_results  # benchmarks/ is on sys.path: the script's folder


def qwen2_vl_shape(text_layers: int, vision_layers: int, vocab: int):
    from transformers import Qwen2VLConfig

    text = dict(vocab_size=vocab, hidden_size=3584, intermediate_size=18944, num_hidden_layers=text_layers,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
                bos_token_id=0, eos_token_id=1, pad_token_id=0)
    vision = dict(depth=vision_layers, embed_dim=1280, hidden_size=3584, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, mlp_ratio=4)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=vocab - 3,
                         vision_start_token_id=vocab - 2, vision_end_token_id=vocab - 1, video_token_id=vocab - 4)


def timed(fn, sync) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


@torch.no_grad()
def qwen2_vl_main(args) -> dict:
    from transformers import Qwen2VLForConditionalGeneration

    from mmcompress import create_compressor
    from mmcompress.vision.runners import PreparedBatch, Qwen2VLRunner

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu":
        torch.set_num_threads(2)
    config = qwen2_vl_shape(args.text_layers, args.vision_layers, args.vocab)
    model = Qwen2VLForConditionalGeneration(config).to(device, dtype).eval()
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    runner = Qwen2VLRunner(model, SimpleNamespace(tokenizer=tokenizer, image_token="<|image_pad|>"))
    side = args.image_size // 14
    grid = torch.tensor([[1, side, side]])
    pixels = torch.randn(side * side, 3 * 2 * 14 * 14)
    units = side * side // 4
    half = args.text_tokens // 2
    ids = torch.cat([torch.randint(0, args.vocab - 10, (half,)), torch.tensor([config.vision_start_token_id]),
                     torch.full((units,), config.image_token_id), torch.tensor([config.vision_end_token_id]),
                     torch.randint(0, args.vocab - 10, (args.text_tokens - half,))])[None]
    processed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                 "image_grid_thw": grid, "mm_token_type_ids": (ids == config.image_token_id).int()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    methods = ["all"] + [m for m in args.methods.split(",") if m]
    compressors = {m: None if m == "all" else create_compressor(m, tokens=args.tokens) for m in methods}
    times: dict[str, dict[str, list[float]]] = {m: {"encode": [], "prefill": []} for m in methods}
    batches = {}
    # round robin over the methods, one warm-up round first: a load that drifts during the run hits all alike
    for repeat in range(args.repeats + 1):
        for method in methods:
            encode_s, encoded = timed(lambda: runner.encode_images(processed, compressors[method], args.tokens), sync)
            cut_ids, mask, columns = runner._cut(processed, encoded, [1])
            batches[method] = (encoded, mask, PreparedBatch(cut_ids.to(device), mask.to(device), encoded, [1],
                                                            runner.positions(processed, columns, mask).to(device)))
            prefill_s, _ = timed(lambda: model(**batches[method][2].model_kwargs(), logits_to_keep=1), sync)
            if repeat:
                times[method]["encode"].append(encode_s)
                times[method]["prefill"].append(prefill_s)
    rows = []
    for method in methods:
        encoded, mask, _ = batches[method]
        encode_s, prefill_s = (statistics.median(times[method][part]) for part in ("encode", "prefill"))
        rows.append({"method": method, "image_tokens": encoded[0].k, "prompt_tokens": int(mask.sum()),
                     "encode_s": round(encode_s, 4), "prefill_s": round(prefill_s, 4),
                     "total_s": round(encode_s + prefill_s, 4)})
    for row in rows:
        row["prefill_speedup"] = round(rows[0]["prefill_s"] / row["prefill_s"], 2)
        row["total_speedup"] = round(rows[0]["total_s"] / row["total_s"], 2)
        print(row, flush=True)
    shape = (f"Qwen2-VL-7B widths, {args.text_layers} of 28 LLM layers, {args.vision_layers} of 32 vision layers, "
             f"vocab {args.vocab}, {args.image_size} px image ({units} LLM image tokens), {args.text_tokens} text "
             f"tokens, {args.dtype} on {args.device}, random weights")
    out = getattr(args, "out", None) or "benchmarks/results/vision_qwen2vl_prefill"
    return write_results(out, "Qwen2-VL-shaped prefill: all image tokens vs K (runner path, reduction cost included)",
                         rows, notes=f"Shape: {shape}. Median of {args.repeats} rounds (methods in turn) after a warm-up round.",
                         extra={"shape": shape, "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)})
