"""Prefill time of a LLaVA-1.5-shaped model with 576 image tokens vs 64 VisionZip tokens (random weights);
``--family qwen2_vl``: the same for a Qwen2-VL-shaped model through mmcompress's runner (:func:`qwen2_vl_main`).

Shape: LLaVA-1.5-7B widths -- CLIP ViT-L/14 at 336 px (hidden 1024, 16 heads, MLP 4096; 24x24 = 576 patches),
projector 1024 -> 4096 -> 4096, Llama-2-7B text layers (hidden 4096, 32 heads, MLP 11008, vocab 32064) -- with the
depth cut to ``--text-layers`` / ``--vision-layers`` so that it fits a CPU run (full 7B fp32 needs ~28 GB). The
per-layer cost is what the token count changes, so the LLM speed-up at reduced depth is the per-layer speed-up.

Two timings, each the median of ``--repeats`` runs after a warm-up, side by side in one process:

- ``llm_prefill``: the language model's forward over ``image tokens + --text-tokens`` prompt tokens;
- ``end_to_end``: pixels -> vision tower -> (VisionZip to 64) -> projector -> language model.

    nice -n 5 python benchmarks/vision_llava_prefill.py --text-layers 2 --vision-layers 2
    nice -n 5 python benchmarks/vision_llava_prefill.py --family qwen2_vl --text-layers 2 --vision-layers 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def llava15_config(text_layers: int, vision_layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                              num_hidden_layers=vision_layers, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       num_hidden_layers=text_layers, vocab_size=32064, max_position_embeddings=4096)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", image_seq_length=576)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=["llava15", "qwen2_vl"], default="llava15")
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--text-tokens", type=int, default=32, help="prompt tokens besides the image")
    p.add_argument("--tokens", type=int, default=64, help="compressed image tokens")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--image-size", type=int, default=448, help="qwen2_vl: square image side in pixels")
    p.add_argument("--vocab", type=int, default=32000, help="qwen2_vl: vocabulary (Qwen2-VL's own is 152064)")
    p.add_argument("--methods", default="visionzip,prumerge,vision_pool", help="qwen2_vl: reductions to time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=None, help="qwen2_vl: results path prefix")
    args = p.parse_args()
    if args.family == "qwen2_vl":
        from vision_qwen2vl_prefill import qwen2_vl_main

        return qwen2_vl_main(args)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    from transformers import LlavaForConditionalGeneration

    from mmcompress import create_compressor
    from mmcompress.vision.encoders import LlavaTowerEncoder

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = LlavaForConditionalGeneration(llava15_config(args.text_layers, args.vision_layers)).eval()
    build_s = time.perf_counter() - t0
    lm = model.model.language_model
    tower = LlavaTowerEncoder(model)
    zip64 = create_compressor("visionzip", tokens=args.tokens)
    pixels = torch.randn(1, 3, 336, 336)
    text = torch.randint(0, 32000, (1, args.text_tokens))

    def embeds(image_tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.get_input_embeddings()(text[:, :4]), image_tokens,
                          model.get_input_embeddings()(text[:, 4:])], dim=1)

    hidden = model.config.text_config.hidden_size
    full_img = torch.randn(1, 576, hidden)
    small_img = torch.randn(1, args.tokens, hidden)
    results = {}
    for name, img in (("576", full_img), (str(args.tokens), small_img)):
        x = embeds(img)
        results[f"llm_prefill_{name}"] = timed(lambda: lm(inputs_embeds=x), args.repeats)
        print(name, "llm", results[f"llm_prefill_{name}"], flush=True)

    def end_to_end(compress: bool):
        feats = tower(pixels, output_attentions=compress)
        tokens = zip64.reduce(feats, args.tokens).tokens if compress else feats.patch_tokens
        return lm(inputs_embeds=embeds(model.model.multi_modal_projector(tokens)))

    results["end_to_end_576"] = timed(lambda: end_to_end(False), args.repeats)
    results[f"end_to_end_{args.tokens}"] = timed(lambda: end_to_end(True), args.repeats)
    k = args.tokens
    record = {
        "shape": {"text": f"Llama-2-7B widths (4096 hidden, 11008 MLP, 32 heads), {args.text_layers} of 32 layers",
                  "vision": f"CLIP ViT-L/14-336 widths, {args.vision_layers} of 24 layers",
                  "projector": "1024 -> 4096 -> 4096 (LLaVA-1.5 mlp2x_gelu)",
                  "prompt": f"{args.text_tokens} text tokens + image tokens",
                  "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)},
        "machine": f"{machine_line()}, fp32",
        "repeats": args.repeats, "build_seconds": round(build_s, 1),
        "seconds": {k_: round(v, 4) for k_, v in results.items()},
        "llm_prefill_speedup": round(results["llm_prefill_576"] / results[f"llm_prefill_{k}"], 2),
        "end_to_end_speedup": round(results["end_to_end_576"] / results[f"end_to_end_{k}"], 2),
        "command": "nice -n 5 python benchmarks/vision_llava_prefill.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vision_llava_prefill.json").write_text(json.dumps(record, indent=2))
    md = ["# LLaVA-1.5-shaped prefill: 576 vs %d image tokens (VisionZip)" % k, "",
          f"Machine: {record['machine']}. Shape: {record['shape']['text']}; {record['shape']['vision']}; "
          f"{record['shape']['prompt']}; {record['shape']['params_millions']}M parameters, random weights.", "",
          "| timing | 576 image tokens (s) | %d tokens (s) | speed-up |" % k, "|---|---|---|---|",
          f"| LLM prefill | {results['llm_prefill_576']:.3f} | {results[f'llm_prefill_{k}']:.3f} | "
          f"{record['llm_prefill_speedup']}x |",
          f"| end to end (tower + reduction + projector + LLM) | {results['end_to_end_576']:.3f} | "
          f"{results[f'end_to_end_{k}']:.3f} | {record['end_to_end_speedup']}x |", "",
          f"Command: `{record['command']}` (median of {args.repeats} after a warm-up)."]
    (RESULTS / "vision_llava_prefill.md").write_text("\n".join(md) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
