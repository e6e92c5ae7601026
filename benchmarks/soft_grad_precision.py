"""How close a bfloat16 soft training step's gradients are to float32's: one batch of the 4x step, the same
compressor (SmolLM2 meanpool, LoRA with non-zero B, as after some training), gradients of every trained parameter
in float32 (the reference) and in bfloat16: with transformers' eager attention, with PyTorch's SDPA, with eager
attention in compiled layers (the trainer's ``compile: layers``), and with compiled layers and int8 frozen matmuls.
Each path computes the loss as the trainer does by default (LM head and cross-entropy fused over chunks of the
labelled rows, ``lm_loss: chunked``) or, where its name says so, with the labelled rows' logits at once (``sliced``,
the default before 2026-12-08; results before ``soft_grad_precision_chunked_loss`` used it throughout).

Each row: the cosine between the path's gradient and the reference's over all trained parameters, the relative
error ``|g - g_ref| / |g_ref|``, and the same for the "low" parameters (the LoRA weights of the two lowest layers
and the task markers, read at the decoder's input, whose gradients come back through the most layers) with the
ratio of the path's gradient norm to the reference's there.

    PYTHONPATH=. python benchmarks/soft_grad_precision.py --threads 2
"""
from __future__ import annotations

import argparse

import torch

from common import add_common_args, apply_common_args, write_results

PATHS = {  # path -> (dtype, attention, compiled layers, frozen matmuls, loss)
    "float32, eager attention (reference)": ("float32", "eager", False, "native", "sliced"),
    "float32, eager attention, chunked loss": ("float32", "eager", False, "native", "chunked"),
    "bfloat16, eager attention": ("bfloat16", "eager", False, "native", "chunked"),
    "bfloat16, sdpa attention": ("bfloat16", "sdpa", False, "native", "chunked"),
    "bfloat16, eager attention, compiled layers": ("bfloat16", "eager", True, "native", "chunked"),
    "bfloat16, eager attention, compiled layers, sliced loss": ("bfloat16", "eager", True, "native", "sliced"),
    "bfloat16, eager attention, compiled layers, int8 frozen matmuls": ("bfloat16", "eager", True, "int8", "chunked"),
    "bfloat16, eager attention, compiled layers, int8 frozen matmuls, sliced loss": ("bfloat16", "eager", True, "int8",
                                                                                     "sliced"),
    "bfloat16, eager attention, int8 frozen matmuls (uncompiled)": ("bfloat16", "eager", False, "int8", "chunked"),
    "bfloat16, sdpa attention, compiled layers, int8 frozen matmuls": ("bfloat16", "sdpa", True, "int8", "chunked"),
    "bfloat16, float32 eager attention": ("bfloat16", "eager_float32", False, "native", "chunked"),
    "bfloat16, float32 eager attention, compiled layers, int8 frozen matmuls": ("bfloat16", "eager_float32", True,
                                                                                "int8", "chunked"),
}


def build(model: str, dtype: str, window: int, lora_r: int, seed: int, attention: str = "eager"):
    from mmcompress import create_compressor

    torch.manual_seed(seed)  # the same LoRA A and markers for every path
    c = create_compressor("meanpool", model=model, device="cpu", dtype=dtype, chunk_tokens=window, lora_r=lora_r,
                          lora_alpha=lora_r, pool_ratio=4)
    c.llm.set_attn_implementation(attention)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh LoRA B is zero: give it values, as after some training
        for name, p in c.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    c.module.eval()  # no dropout: every path computes the same function
    return c


def gradients(module, batch) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch)["loss"]
    loss.backward()
    return float(loss), {n: p.grad.float().flatten() for n, p in module.named_parameters() if p.grad is not None}


def compare(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], names: list[str]) -> tuple:
    got = torch.cat([grads[n] if n in grads else torch.zeros_like(reference[n]) for n in names]).double()
    want = torch.cat([reference[n] for n in names]).double()
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=0)
    return float(cosine), float((got - want).norm() / want.norm()), float(got.norm() / want.norm())


def is_low(name: str) -> bool:
    return name == "markers" or any(f".layers.{i}." in name for i in (0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--text", default="../shared/data/corpus_wiki_news.txt")
    add_common_args(ap, "benchmarks/results/soft_grad_precision")
    args = ap.parse_args()
    apply_common_args(args)

    from mmcompress.models.compile import compile_blocks
    from mmcompress.models.switchback import int8_frozen_linears
    from mmcompress.soft.losses import collate
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    reference, batch, rows = None, None, []
    for path, (dtype, attention, compiled, matmuls, lm_loss) in PATHS.items():
        c = build(args.model, dtype, args.window, args.lora_r, args.seed, attention)
        c.module.lm_loss = lm_loss
        if batch is None:  # one batch for every path (the tokenizer is the same)
            tok = c.tokenizer
            data = {**DATA_DEFAULTS, "text": args.text, "context_tokens": args.window,
                    "max_train_examples": args.batch_size}
            train, _ = build_datasets(data, tok, tok.eos_token_id)
            batch = collate([train[i] for i in range(args.batch_size)], args.window, tok.pad_token_id)
        if matmuls == "int8":
            int8_frozen_linears(c.module)
        if compiled:
            compile_blocks(c.module)
        loss, grads = gradients(c.module, batch)
        if reference is None:
            reference = grads
        names = list(reference)
        low = [n for n in names if is_low(n)]
        cosine, error, _ = compare(grads, reference, names)
        low_cosine, low_error, low_norm = compare(grads, reference, low)
        rows.append({"path": path, "lm_loss": lm_loss, "loss": loss, "cosine": cosine, "relative_error": error,
                     "low_cosine": low_cosine, "low_relative_error": low_error, "low_norm_ratio": low_norm})
        print(rows[-1], flush=True)
    notes = (f"One batch of {args.batch_size} windows of {args.window} tokens at 4x, meanpool, LoRA r={args.lora_r} "
             f"with B ~ N(0, 0.05^2). 'low': the {len(low)} trained tensors of the two lowest layers' LoRA and the "
             "task markers.")
    print(write_results(args.out, "Soft step gradients in bfloat16 against float32", rows, notes=notes)["rows"])


if __name__ == "__main__":
    main()
