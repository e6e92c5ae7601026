"""A fair small-VLM testbed for training-free visual-token reduction (issue 20, item 4): K = 4, 8, 16 of 64 patches.

The small VLM of ``benchmarks/vision_small_vlm.py`` (random-init ViT ``mmc-vit-nano-p4-32``, 64 patch tokens ->
linear projector -> frozen SmolLM2-135M, CIFAR-10 class names as answers) puts every reduction at chance when its
projector only ever saw whole 64-token images. Here the ``full`` model (linear projector, one LLM token per patch)
is trained with ``token_dropout`` (``SmallVLMConfig``): each step keeps K patches per image, K uniform in
``--dropout LO HI``, a random subset per image in patch order, so a reduced image is in distribution. Then every
registered reduction that works on patch tokens (VisionZip, PruMerge, ToMe, pooling, random, strided; FastV prunes
inside the LLM and is not one of them) keeps K of the 64 patch tokens before the projector.

Choices are made on the validation split (the last 10% of the 80% train split, 160 images, never trained on):
``select`` scores each saved checkpoint by the mean accuracy of all methods at K = 8 (a criterion that favours no
method) and records the choice. ``test`` reads the 400 test images once, with the chosen checkpoint, and refuses to
run again once its result exists (``--force`` to overwrite, which the docs would have to say). Accuracy is
closed-set (the class name the LLM scores highest among the 10 at the answer position), with a Wilson 95% interval;
each method is paired with random pruning at the same K on the same images: images won / lost, exact McNemar p, and
a paired bootstrap 95% interval of the accuracy difference.

Commands (each with ``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=.``, ``nice -n 5``): see docs/vision.md,
"A fair testbed". Stage 1 is ``vision_small_vlm.py train --objective embedding`` (no LLM pass); then::

    python benchmarks/vision_small_vlm_fair.py train --init runs/vision_small_vlm/fair_stage1/joint.safetensors \\
        --run fair_qa --steps 400 --dropout 4 16 [--resume]
    python benchmarks/vision_small_vlm_fair.py select --run fair_qa
    python benchmarks/vision_small_vlm_fair.py test --run fair_qa
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine_line, write_results  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)
from vision_small_vlm import REDUCTIONS, RESULTS, RUN, build  # noqa: E402

from mmcompress.evaluation.metrics import mcnemar_exact, wilson_interval  # noqa: E402
from mmcompress.vision.training import ImageLabelDataset, preprocess_all  # noqa: E402

KS = [4, 8, 16]
SELECT_K = 8
OUT = RESULTS / "vision_small_vlm_fair"


class FullOnly(nn.Module):
    """Trains only the ``full`` model (ViT + linear projector) of the joint checkpoint; the resampler is untouched."""

    def __init__(self, full):
        super().__init__()
        self.full = full

    def training_step(self, batch):
        return self.full.training_step(batch)


def cmd_train(args):
    from safetensors.torch import load_model, save_model

    from mmcompress.training import TrainConfig, Trainer

    torch.manual_seed(0)
    joint, train, _ = build("qa")
    if args.init:
        load_model(joint, args.init)
    joint.full.config = dataclasses.replace(joint.full.config, token_dropout=list(args.dropout))
    run = RUN / args.run
    ds = ImageLabelDataset(preprocess_all(joint.full.encoder, train.images), train.labels, augment=True)
    cfg = TrainConfig(output_dir=str(run), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=0.05, warmup_steps=args.warmup, log_every=args.log_every, progress=False, seed=0,
                      save_every=args.save_every, keep_checkpoints=args.keep, resume=args.resume)
    t0 = time.perf_counter()
    result = Trainer(FullOnly(joint.full), cfg, ds).train()
    save_model(joint, str(run / "joint.safetensors"))
    info = {"objective": "qa", "init": args.init, "steps": result.steps, "token_dropout": list(args.dropout),
            "seconds_last_run": round(time.perf_counter() - t0, 1), "batch_size": args.batch_size, "lr": args.lr,
            "load_at_end": os.getloadavg()[0], "last": result.history[-1] if result.history else {}}
    (run / "train_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def load_checkpoint(joint, path: Path) -> None:
    """A final ``joint.safetensors``, a trainer checkpoint folder or its ``trainable.safetensors`` (the weights of
    the ``full`` model only, as committed next to the results)."""
    from safetensors.torch import load_file, load_model

    file = path / "trainable.safetensors" if path.is_dir() else path
    state = load_file(str(file))
    if not all(k.startswith("full.") for k in state):
        load_model(joint, str(file))
        return
    joint.full.load_state_dict({k.removeprefix("full."): v for k, v in state.items()})  # strict: every weight


@torch.no_grad()
def correct(vlm, pixels, labels, method: str | None, k: int, batch: int = 50, **options) -> np.ndarray:
    """Per image: is the closed-set answer right? ``method`` None = all 64 patches."""
    from mmcompress import create_compressor

    reduction = create_compressor(method, tokens=k, **options) if method else None
    hits = []
    for i in range(0, len(labels), batch):
        pred = vlm.predict(pixels[i:i + batch], tokens=k if method else None, reduction=reduction)
        hits.append((pred["closed"] == labels[i:i + batch]).numpy())
    return np.concatenate(hits)


def held_out(split: str):
    joint, _, splits = build()
    data = splits[split]
    joint.eval()
    return joint, preprocess_all(joint.full.encoder, data.images), torch.as_tensor(data.labels)


def cmd_select(args):
    joint, pixels, labels = held_out("validation")
    run = RUN / args.run
    # the trainer's checkpoints (the last one is the end of training, as joint.safetensors); scores are kept in the
    # run folder, so select can score early checkpoints while training goes on and only new ones later
    candidates = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    candidates = candidates or [run / "joint.safetensors"]
    cache = run / "validation_scores.json"
    scored = json.loads(cache.read_text()) if cache.exists() else {}
    for path in candidates:
        if path.name in scored:
            continue
        load_checkpoint(joint, path)
        row = {"checkpoint": path.name}
        for method in REDUCTIONS:
            row[method] = float(correct(joint.full, pixels, labels, method, SELECT_K).mean())
        row["mean"] = float(np.mean([row[m] for m in REDUCTIONS]))
        scored[path.name] = row
        cache.write_text(json.dumps(scored, indent=1))
        print(json.dumps(row), flush=True)
    rows = [scored[p.name] for p in candidates]
    best = max(rows, key=lambda r: r["mean"])  # first of equals: the earlier checkpoint
    write_results(OUT.with_name(OUT.name + "_validation"),
                  f"Small VLM, token-dropout training: checkpoint choice on validation (160 images, K = {SELECT_K})",
                  rows, notes=f"Chosen: {best['checkpoint']} (highest mean closed-set accuracy over the methods).",
                  extra={"run": args.run, "chosen": best["checkpoint"], "k": SELECT_K})


# the options (off by default) that bring a method's output closer to what this projector was trained on
VARIANTS = {"vision_random": {}, "visionzip": {}, "visionzip (include_cls: false)": {"include_cls": False},
            "prumerge": {}, "prumerge (patch_order: true)": {"patch_order": True},
            "prumerge (patch_order: true, extra_token: false)": {"patch_order": True, "extra_token": False}}


def cmd_variants(args):
    """A diagnostic on validation (after the test was read): do the options that put VisionZip's and PruMerge's
    output closer to the training distribution (no CLS token; patch order; no merged extra token) change the
    picture? Validation only: a choice made from it would need a fresh test split."""
    chosen = json.loads(OUT.with_name(OUT.name + "_validation").with_suffix(".json").read_text())
    joint, pixels, labels = held_out("validation")
    load_checkpoint(joint, RUN / chosen["run"] / chosen["chosen"])
    rows = []
    rows_random: dict[int, np.ndarray] = {}
    for name, options in VARIANTS.items():
        row = {"method": name}
        for k in KS:
            h = correct(joint.full, pixels, labels, name.split(" ")[0], k, **options)
            row[f"acc@{k}"] = float(h.mean())
            if name == "vision_random":
                rows_random[k] = h
            else:
                r = rows_random[k]
                row[f"won/lost@{k}"] = f"{int((h & ~r).sum())}/{int((~h & r).sum())}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(OUT.with_name(OUT.name + "_variants_validation"),
                  f"Small VLM, token dropout: VisionZip / PruMerge options on validation (160 images), "
                  f"{chosen['chosen']}", rows,
                  notes="Closed-set accuracy; won/lost: images right only with the method / only with vision_random "
                        "(seed 0) at the same K. A diagnostic made after the test split was read: not a test result.")


def paired(a: np.ndarray, b: np.ndarray, rounds: int = 10000, seed: int = 0) -> dict:
    """``a`` vs ``b`` on the same images: won / lost, exact McNemar p, paired bootstrap 95% interval of the
    accuracy difference."""
    won, lost = int((a & ~b).sum()), int((~a & b).sum())
    idx = np.random.default_rng(seed).integers(0, len(a), (rounds, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(a.mean() - b.mean()), "diff_lo": float(lo), "diff_hi": float(hi), "won": won,
            "lost": lost, "mcnemar_p": mcnemar_exact(won, lost)}


def cmd_test(args):
    choice = OUT.with_name(OUT.name + "_validation").with_suffix(".json")
    if not choice.exists():
        raise SystemExit(f"error: no checkpoint chosen yet ({choice} missing): run select first")
    chosen = json.loads(choice.read_text())
    if OUT.with_suffix(".json").exists() and not args.force:
        raise SystemExit(f"error: {OUT.with_suffix('.json')} exists: the test split is read once (--force to redo)")
    joint, pixels, labels = held_out("test")
    run = RUN / chosen["run"]
    load_checkpoint(joint, Path(args.checkpoint) if args.checkpoint else run / chosen["chosen"])
    t0 = time.perf_counter()
    hits = {("full (all 64 patches)", 64): correct(joint.full, pixels, labels, None, 64)}
    for k in KS:
        for method in REDUCTIONS:
            hits[(method, k)] = correct(joint.full, pixels, labels, method, k)
            print(method, k, hits[(method, k)].mean(), flush=True)
        for seed in range(1, args.random_seeds):  # how much one random draw moves: not paired, for the spread
            hits[(f"vision_random (seed {seed})", k)] = correct(joint.full, pixels, labels, "vision_random", k,
                                                               seed=seed)
    n, rows = len(labels), []
    for (method, k), h in hits.items():
        lo, hi = wilson_interval(int(h.sum()), n)
        row = {"method": method, "k": k, "acc": float(h.mean()), "acc_lo": lo, "acc_hi": hi}
        if method in REDUCTIONS and method != "vision_random":
            row.update({f"{key}_vs_random": v for key, v in paired(h, hits[("vision_random", k)]).items()})
        if method in REDUCTIONS and method != "vision_pool":
            row.update({f"{key}_vs_pool": v for key, v in paired(h, hits[("vision_pool", k)]).items()})
        rows.append(row)
    comparisons = len(KS) * (len(REDUCTIONS) - 1)
    info = json.loads((run / "train_info.json").read_text()) if (run / "train_info.json").exists() else {}
    write_results(OUT, "Small VLM trained with token dropout: training-free reductions vs random at K of 64 "
                  "(CIFAR-10 test, 400 images, read once)", rows,
                  columns=["method", "k", "acc", "acc_lo", "acc_hi", "diff_vs_random", "diff_lo_vs_random",
                           "diff_hi_vs_random", "won_vs_random", "lost_vs_random", "mcnemar_p_vs_random",
                           "diff_vs_pool", "mcnemar_p_vs_pool"],
                  notes=(f"Checkpoint {chosen['chosen']} of run {chosen['run']}, chosen on validation. acc: closed-set "
                         "accuracy (chance 0.10), [acc_lo, acc_hi] Wilson 95%; diff vs vision_random at the same K on "
                         "the same images with a paired bootstrap 95% interval (10,000 rounds), images won/lost, "
                         f"exact McNemar p ({comparisons} comparisons: Bonferroni threshold "
                         f"{0.05 / comparisons:.4f}); the same against vision_pool (pooling) in the _vs_pool columns; "
                         + ("vision_random seeds 1+ show how much one random draw moves (not paired). "
                            if args.random_seeds > 1 else "vision_random is one seeded draw (seed 0). ")
                         + f"{machine_line()}; evaluation {time.perf_counter() - t0:.0f} s."),
                  extra={"train": info, "chosen": chosen["chosen"], "per_image": {
                      f"{m}@{k}": "".join("1" if x else "0" for x in h) for (m, k), h in hits.items()}})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--init", help="joint.safetensors to start from (the embedding stage)")
    t.add_argument("--run", default="fair_qa", help="folder under runs/vision_small_vlm/")
    t.add_argument("--dropout", nargs=2, type=int, default=[4, 16], metavar=("LO", "HI"),
                   help="patch tokens kept per training image: K uniform in [LO, HI] per step")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--save-every", type=int, default=100)
    t.add_argument("--keep", type=int, default=4, help="checkpoints kept (candidates for select)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in runs/")
    s = sub.add_parser("select")
    s.add_argument("--run", default="fair_qa")
    e = sub.add_parser("test")
    e.add_argument("--force", action="store_true")
    e.add_argument("--checkpoint", help="weights to test instead of the chosen checkpoint (e.g. the committed "
                   "benchmarks/results/vision_small_vlm_fair_model.safetensors, to reproduce)")
    e.add_argument("--random-seeds", type=int, default=1, help="random pruning with seeds 0..N-1 (seed 0 is paired)")
    sub.add_parser("variants", help="VisionZip / PruMerge options on validation (a diagnostic)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"train": cmd_train, "select": cmd_select, "test": cmd_test, "variants": cmd_variants}[args.cmd](args)


if __name__ == "__main__":
    main()
