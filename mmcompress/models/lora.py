"""LoRA on a causal LM with peft, from any config that carries ``lora_r``, ``lora_alpha``, ``lora_dropout`` and
``lora_targets`` (the soft encoder, GIST's LoRA fine-tuning, the interleaved decoder tuning)."""
from __future__ import annotations

import logging
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def lora_config(config: Any, rank: int | None = None):
    """peft's LoraConfig from the config's LoRA fields; ``rank`` makes a second adapter of that rank with scaling 1
    (alpha = rank), whatever the first adapter's rank and alpha."""
    from peft import LoraConfig

    targets = config.lora_targets
    rank, alpha = (int(config.lora_r), int(config.lora_alpha)) if rank is None else (int(rank), int(rank))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(config.lora_dropout),
                      target_modules=targets if isinstance(targets, str) else list(targets), bias="none")


def add_lora(llm: nn.Module, config: Any):
    """Inject a trainable LoRA adapter into ``llm`` (in place; base weights frozen) and return the
    :class:`peft.PeftModel` around it. ``lora_targets``: "all-linear" or module names such as ``["q_proj"]``."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated ``is_gradient_checkpointing``: a FutureWarning on every load that
        # the user can do nothing about
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(llm, lora_config(config))


def add_second_adapter(peft_model: Any, name: str, config: Any, rank: int) -> None:
    """A second trainable LoRA adapter ``name`` beside the first (both stay trainable; switch with
    :func:`activate_adapter`)."""
    peft_model.add_adapter(name, lora_config(config, rank))
    for param_name, p in peft_model.named_parameters():
        if "lora_" in param_name:
            p.requires_grad_(True)


def activate_adapter(peft_model: Any, name: str) -> None:
    """Route every LoRA layer through adapter ``name`` without touching ``requires_grad`` (peft's own
    ``set_adapter`` freezes the other adapters, which would cut a jointly trained one out of the optimiser)."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module._active_adapter = name


def compact_lora(weights: dict[str, Any], adapter: str, rank: int, scale: float = 1.0) -> tuple[dict[str, Any], float]:
    """Re-factor adapter ``adapter`` in saved ``weights`` (peft names ``...lora_A.<adapter>.weight`` and
    ``...lora_B.<adapter>.weight``) to ``rank``, the best rank-``rank`` approximation of each update
    ``scale * B @ A`` (truncated SVD; singular values split evenly between the factors).

    Trained LoRA updates are often of much lower rank than the adapter (the rank-16 updates of ``soft-smollm2-4x``'s
    encoder kept 99.8% of their squared norm in 8 directions), so this shrinks shipped weights at little cost. The scale is folded
    into the factors: load the result with ``lora_alpha = rank`` (scaling 1). Other tensors pass through unchanged.
    Returns the new weights and the share of the updates' squared Frobenius norm kept (1.0 when nothing is cut).
    """
    import torch

    rank = int(rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    tag_a, tag_b = f".lora_A.{adapter}.", f".lora_B.{adapter}."
    pairs = [name for name in weights if tag_a in name]
    if not pairs:
        raise ValueError(f"no LoRA adapter {adapter!r} in these weights")
    out = {name: t for name, t in weights.items() if tag_a not in name and tag_b not in name}
    kept = total = 0.0
    for name_a in pairs:
        name_b = name_a.replace(tag_a, tag_b)
        a, b = weights[name_a], weights[name_b]
        update = float(scale) * (b.double() @ a.double())
        u, s, vh = torch.linalg.svd(update, full_matrices=False)
        energy = s.square()
        total += float(energy.sum())
        kept += float(energy[:rank].sum())
        root = s[:rank].sqrt()
        factor_b = u[:, :rank] * root
        factor_a = root[:, None] * vh[:rank]
        if factor_b.shape[1] < rank:  # an update narrower than the rank: pad with zero directions
            factor_b = torch.nn.functional.pad(factor_b, (0, rank - factor_b.shape[1]))
            factor_a = torch.nn.functional.pad(factor_a, (0, 0, 0, rank - factor_a.shape[0]))
        out[name_a] = factor_a.to(a.dtype).contiguous()
        out[name_b] = factor_b.to(b.dtype).contiguous()
    return out, (kept / total if total > 0 else 1.0)


LORA_ADAPTERS = (("default", "lora_r", "lora_alpha"), ("decoder", "decoder_lora_r", None))  # decoder: alpha = rank


def shrink_adapters(weights: dict[str, Any], saved: dict[str, Any], config: Any, source: str = "weights"):
    """Saved LoRA adapters refactored to ``config``'s lower ranks where it asks for less than was saved (e.g. a last
    recipe stage ``model: {lora_r: 8}`` after rank-16 stages): each update is replaced by its best approximation at
    the new rank (:func:`compact_lora`), its scale folded in, so training continues from
    nearly the same compressor with fewer parameters. Other cases are left to ``SoftCompressor.load_trainable``'s checks.
    Returns the weights and, per adapter cut, ``(old rank, new rank, share of the updates' energy kept)``."""
    cuts = {}
    for adapter, rank_field, alpha_field in LORA_ADAPTERS:
        old, new = int(saved.get(rank_field, 0) or 0), int(getattr(config, rank_field, 0) or 0)
        if not 0 < new < old:
            continue
        old_scale = float(saved.get(alpha_field, old)) / old if alpha_field else 1.0
        new_scale = float(getattr(config, alpha_field)) / new if alpha_field else 1.0
        weights, kept = compact_lora(weights, adapter, new, old_scale / new_scale)
        cuts[adapter] = (old, new, kept)
        logger.info("%s: LoRA adapter %r cut from rank %d to %d (%.2f%% of its updates' energy kept)",
                    source, adapter, old, new, 100 * kept)
    return weights, cuts


def added_adapters(saved: dict[str, Any], config: Any) -> tuple[str, ...]:
    """Name tags (``".decoder."``) of the adapters ``config`` asks for that the saved compressor lacks: they keep
    their fresh initialisation, and as LoRA's B starts at zero the continued compressor starts exactly where the saved
    one stopped (a decoder adapter added by a later recipe stage)."""
    return tuple(f".{adapter}." for adapter, rank_field, _ in LORA_ADAPTERS
                 if not int(saved.get(rank_field, 0) or 0) and int(getattr(config, rank_field, 0) or 0) > 0)
