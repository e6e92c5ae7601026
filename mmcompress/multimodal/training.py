"""Training task ``interleaved``: adapter and soft encoder trained jointly with the shared trainer.

A recipe (``configs/train/interleaved-*.yaml``)::

    task: interleaved
    model: {num_slots: 8, style: icae, adapter: perceiver, image_tokens: 16}   # InterleavedConfig fields
    data:
      source: shapes              # cifar | shapes | mixed (see mmcompress.multimodal.tasks)
      train_examples: 2000
      eval_examples: 64
      num_images: [2, 3]
      mix: {qa: 1.0, caption: 0.25, ae: 0.25}   # relative weights of the objectives
    train: {max_steps: 300, batch_size: 8, lr: 3e-4, output_dir: runs/interleaved}
    init_image_path: runs/interleaved-full/final   # optional: start encoder + adapter from a saved model
    init_from: null                                # optional: continue a saved interleaved model
    init_text_compressor: null                     # optional: start the soft encoder from a text compressor
                                                   # of the same style (e.g. soft-smollm2-4x for style meanpool)

Objectives, mixed per example by a seeded draw (so every epoch and a resumed run see the same data):

- ``qa``: compress the interleaved prompt, answer its question (the question stays text, in the QA template);
- ``caption``: compress one image, answer "What is this?" with its label ("a red circle", "a cat"): the
  captioning / classification objective that teaches the adapter what images show;
- ``ae``: compress the interleaved prompt, regenerate its text parts (images as ``<image>``) after the [AE] marker:
  ICAE's autoencoding of the text parts.

The final compressor is saved to ``<output_dir>/final`` (``create_compressor(path)`` loads it).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..data_paths import resolve_data_path
from ..training.tasks import TaskSetup, register_task
from .interleaved import InterleavedCompressor, rendered_text
from .tasks import build_examples

OBJECTIVES = ("qa", "caption", "ae")


class ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def make_items(compressor: InterleavedCompressor, examples, mix: dict[str, float], seed: int):
    """Turn QA examples (and caption examples) into training items, choosing an objective per example."""
    rng = random.Random(seed)
    names = [k for k in OBJECTIVES if mix.get(k, 0) > 0]
    weights = [float(mix[k]) for k in names]
    items = []
    for e in examples:
        if e.kind == "caption":
            items.append(compressor.example_item(e.prompt(), e.answer, "qa"))
            continue
        objective = rng.choices(names, weights)[0]
        if objective == "caption":
            from .tasks import InterleavedExample

            j = rng.randrange(len(e.images))
            label = e.labels[j]
            name = f"{'an' if label[0] in 'aeiou' else 'a'} {label}"
            single = InterleavedExample("<image>\n", [e.images[j]], "What is this?", name, "caption", [label], 0)
            items.append(compressor.example_item(single.prompt(), single.answer, "qa"))
        elif objective == "ae":
            prompt = e.prompt()
            items.append(compressor.example_item(prompt, None, "ae", target_text=rendered_text(prompt)))
        else:
            items.append(compressor.example_item(e.prompt(), e.answer, "qa"))
    return items


def _saved_folder(recipe: dict[str, Any], key: str) -> Path:
    try:
        return resolve_data_path(recipe[key])
    except ConfigError:
        raise ConfigError(f"{key}: {recipe[key]} does not exist; train the run that writes it first, or set "
                          f"{key}: null") from None


@register_task("interleaved", sections=("init_from", "init_image_path", "init_text_compressor"))
def build_interleaved(recipe: dict[str, Any]) -> TaskSetup:
    model_cfg = dict(recipe.get("model") or {})
    data = dict(recipe.get("data") or {})
    unknown = sorted(set(data) - {"source", "train_examples", "eval_examples", "num_images", "mix", "seed", "kinds",
                                  "max_images"})
    if unknown:
        raise ConfigError(f"unknown data settings {unknown} for task interleaved")
    if recipe.get("init_from"):  # continue a saved interleaved model (any stage)
        compressor = InterleavedCompressor.from_pretrained(_saved_folder(recipe, "init_from"), **model_cfg)
    else:
        compressor = InterleavedCompressor(**model_cfg)
    if recipe.get("init_text_compressor"):
        if recipe.get("init_from"):
            raise ConfigError("init_from and init_text_compressor both set the soft encoder; give one")
        if compressor.config.mode != "soft":
            raise ConfigError("init_text_compressor starts a soft encoder: it needs model.mode: soft")
        compressor.load_text_compressor(recipe["init_text_compressor"])
    if recipe.get("init_image_path"):  # e.g. the full-mode reference's aligned adapter as the soft run's start
        compressor.load_image_path(_saved_folder(recipe, "init_image_path"))
    source = data.get("source", "shapes")
    seed = int(data.get("seed", 0))
    mix = dict(data.get("mix") or {"qa": 1.0})
    bad = sorted(set(mix) - set(OBJECTIVES))
    if bad:
        raise ConfigError(f"unknown objectives {bad} in data.mix; use {OBJECTIVES}")
    kw = {"num_images": tuple(data.get("num_images", (2, 3))), "kinds": data.get("kinds"),
          "max_images": data.get("max_images")}
    train = build_examples(source, "train", int(data.get("train_examples", 2000)), seed=seed, **kw)
    # the run is scored on the validation split; the test split is kept for the reported numbers
    evals = build_examples(source, "validation", int(data.get("eval_examples", 64)), seed=seed + 1, **kw)
    train_items = make_items(compressor, train, mix, seed)
    eval_items = make_items(compressor, evals, {"qa": 1.0}, seed + 1)
    module = compressor.module
    module.train()

    def finalize(trained, output_dir: Path):
        compressor.save_pretrained(Path(output_dir) / "final")

    return TaskSetup(module, ItemDataset(train_items), ItemDataset(eval_items), compressor.collate, finalize)
