"""Training task ``small_vlm``: an open_clip ViT + adapter in front of a frozen LLM, trained to answer a question
about an image with its class name (e.g. CIFAR-10 "What is in the image?" -> "cat").

Recipe (``configs/train/small-vlm-cifar10.yaml``)::

    task: small_vlm
    model: {encoder: open_clip:mmc-vit-tiny-p4-32, lm: smollm2-135m, objective: embedding,
            adapter: {name: perceiver, tokens: 16, depth: 2, heads: 4, dim_head: 48, max_patches: 64},
            nested_tokens: [1, 4, 16]}
    data: {npz: ../shared/data/cifar10_dev.npz, train_fraction: 0.8, validation_fraction: 0.1, seed: 0}
    train: {max_steps: 600, batch_size: 64, lr: 1.0e-3, output_dir: runs/small-vlm}

``nested_tokens`` trains one resampler for several K at once (MQT-LLaVA: a random K per step, first K latents).
``token_dropout: [lo, hi]`` (off by default) trains on a random subset of K in [lo, hi] patches per image, so that
training-free reductions to K patches are in distribution for the adapter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..training.tasks import TaskSetup, check_keys, register_task


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int [N]
    classes: list[str]


def load_npz_split(path: str | Path, train_fraction: float = 0.8, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """An ``.npz`` with ``images`` (uint8 [N, H, W, 3]) and ``labels`` (class names) -> a seeded train/test split."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    data = np.load(path, allow_pickle=False)
    images, names = data["images"], data["labels"].astype(str)
    classes = sorted(set(names.tolist()))
    labels = np.array([classes.index(n) for n in names])
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(round(train_fraction * len(images)))
    tr, te = order[:cut], order[cut:]
    return LabelledImages(images[tr], labels[tr], classes), LabelledImages(images[te], labels[te], classes)


def load_npz_splits(path: str | Path, train_fraction: float = 0.8, validation_fraction: float = 0.1,
                    seed: int = 0) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """Train / validation / test: the test split is :func:`load_npz_split`'s, and the last ``validation_fraction``
    of its train split is held out for choosing checkpoints and settings, so the test split is read only for the
    reported numbers."""
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    pool, test = load_npz_split(path, train_fraction, seed)
    cut = len(pool.labels) - max(1, int(round(len(pool.labels) * validation_fraction)))
    part = lambda sl: LabelledImages(pool.images[sl], pool.labels[sl], pool.classes)  # noqa: E731
    return part(slice(0, cut)), part(slice(cut, None)), test


class ImageLabelDataset(Dataset):
    """Preprocessed pixels with labels; ``augment`` adds random crops (pad 4) and horizontal flips."""

    def __init__(self, pixels: torch.Tensor, labels: np.ndarray, augment: bool = False):
        self.pixels, self.labels, self.augment = pixels, torch.as_tensor(labels), augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.pixels[i]
        if self.augment:
            h, w = x.shape[-2:]
            padded = nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
            top, left = random.randint(0, 8), random.randint(0, 8)
            x = padded[:, top:top + h, left:left + w]
            if random.random() < 0.5:
                x = x.flip(-1)
        return {"pixels": x, "label": self.labels[i]}


class NestedTokens(nn.Module):
    """Wraps a SmallVLM whose adapter has nested latents: each step trains a random K from ``choices``."""

    def __init__(self, vlm: nn.Module, choices: list[int]):
        super().__init__()
        self.vlm, self.choices = vlm, list(choices)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.vlm.training_step({**batch, "tokens": random.choice(self.choices)})

    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return self.vlm.evaluation_step(batch)

    def save_pretrained(self, path):
        return self.vlm.save_pretrained(path)


def build_small_vlm(model_cfg: dict[str, Any], classes: list[str], lm: Any = None, tokenizer: Any = None):
    from ..models import load_language_model
    from .adapters import create_adapter
    from .encoders import create_encoder
    from .small_vlm import SmallVLM, SmallVLMConfig

    cfg = dict(model_cfg)
    encoder = create_encoder(cfg.get("encoder", "open_clip:mmc-vit-tiny-p4-32"))
    if lm is None:
        lm, tokenizer = load_language_model(cfg.get("lm", "smollm2-135m"), device="cpu", dtype="float32")
    adapter_cfg = dict(cfg.get("adapter", {"name": "perceiver", "tokens": 16}))
    adapter = create_adapter(adapter_cfg.pop("name"), in_dim=encoder.hidden_size, out_dim=lm.config.hidden_size,
                             **adapter_cfg)
    vlm_cfg = SmallVLMConfig(**{k: cfg[k] for k in ("prefix", "suffix", "objective", "train_encoder", "temperature",
                                                            "mse_weight", "token_dropout")
                                if k in cfg})
    return SmallVLM(encoder, adapter, lm, tokenizer, classes, vlm_cfg)


def preprocess_all(encoder, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.preprocess(list(images[i:i + batch])) for i in range(0, len(images), batch)])


@register_task("small_vlm")
def build(recipe: dict[str, Any]) -> TaskSetup:
    data_cfg = check_keys("data", recipe.get("data"), ("npz", "train_fraction", "validation_fraction", "seed",
                                                       "eval_size"))
    model_cfg = check_keys("model", recipe.get("model"), ("encoder", "lm", "adapter", "prefix", "suffix", "objective",
                                                          "train_encoder", "temperature", "mse_weight",
                                                          "token_dropout", "nested_tokens"))
    if "npz" not in data_cfg:
        raise ConfigError("the small_vlm task needs data.npz (images + class-name labels)")
    # the run is scored on the validation split; the test split is left for the reported numbers
    train, validation, _ = load_npz_splits(data_cfg["npz"], data_cfg.get("train_fraction", 0.8),
                                           data_cfg.get("validation_fraction", 0.1), data_cfg.get("seed", 0))
    vlm = build_small_vlm(model_cfg, train.classes)
    module = NestedTokens(vlm, model_cfg["nested_tokens"]) if model_cfg.get("nested_tokens") else vlm
    train_ds = ImageLabelDataset(preprocess_all(vlm.encoder, train.images), train.labels, augment=True)
    eval_n = data_cfg.get("eval_size")
    val_ds = ImageLabelDataset(preprocess_all(vlm.encoder, validation.images[:eval_n]), validation.labels[:eval_n])
    return TaskSetup(module, train_ds, val_ds, finalize=lambda m, out: m.save_pretrained(Path(out) / "final"))
