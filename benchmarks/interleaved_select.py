"""Choose a soft interleaved model's checkpoint on the validation split (easy-VQA train images held out from training),
never on the test split: each candidate answers the same validation prompts with K soft tokens, and the most
accurate one is chosen (ties: the earlier one) and saved as ``<run>/chosen`` (a folder ``create_compressor`` loads),
which ``interleaved_results.py --split test`` then reads.

Candidates: the trainer's ``checkpoint-*`` folders of ``--run`` (their ``trainable.safetensors`` loaded into the
saved ``final`` model, which holds the config, the frozen image path and the inherited decoder) and ``final``
itself; with ``--text-start NAME`` also step 0, the soft encoder as the text compressor left it (no interleaved
training), which shows what that start alone carries.

    PYTHONPATH=. python benchmarks/interleaved_select.py --run runs/il-meanpool-800 --text-start soft-smollm2-4x \\
        --examples 160 --k 8 --threads 2 --out benchmarks/results/interleaved_meanpool_select
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import add_common_args, apply_common_args, write_results  # noqa: E402  (benchmarks/ on sys.path)
from interleaved_results import evaluate  # noqa: E402


def candidates(run: Path) -> list[tuple[int | None, Path]]:
    """``(step, folder)``: the checkpoints in step order, then ``final`` (step None) unless the last checkpoint holds
    the same weights (a run whose last step was saved)."""
    found = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    out = [(int(p.name.split("-")[1]), p) for p in found]
    final = run / "final" / "trainable.safetensors"
    if final.is_file() and (not found or not same_weights(found[-1] / "trainable.safetensors", final)):
        out.append((None, run / "final"))
    return out


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k].to(x[k].dtype)) for k in x)


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                         "benchmarks/results/interleaved_select")
    ap.add_argument("--run", required=True, help="a training run folder (checkpoint-* and final/)")
    ap.add_argument("--base", default=None,
                    help="the saved model whose config, image path and decoder the candidates load into (default: "
                         "<run>/final; another run of the same recipe's final for a run stopped at a checkpoint)")
    ap.add_argument("--text-start", default=None, help="also score step 0: final with this text compressor's weights")
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--k", type=int, default=8, help="soft tokens per chunk the choice is made at")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    apply_common_args(args)
    from safetensors.torch import load_file

    from mmcompress import create_compressor
    from mmcompress.multimodal.tasks import build_examples

    run = Path(args.run)
    examples = build_examples("shapes", "validation", args.examples, seed=1, num_images=(3,),
                              kinds=["shape-colour", "shape-what"])
    prompts = [e.prompt() for e in examples]
    comp = create_compressor(str(args.base or run / "final"), device="cpu")
    comp.module.eval()
    comp.set_slots(args.k)
    rows = []
    todo = ([(0, None)] if args.text_start else []) + candidates(run)
    weights_of = {}
    for step, folder in todo:
        if folder is None:
            comp.load_text_compressor(args.text_start)
            name = f"step 0 ({args.text_start} as it is)"
        else:
            weights = folder / "trainable.safetensors"
            comp.load_trainable(load_file(str(weights)), source=str(weights))
            name = folder.name
            weights_of[name] = weights
        r = evaluate(comp, prompts, examples, args.batch_size)
        rows.append({"candidate": name, "step": step, "accuracy": r["accuracy"],
                     "colour": r["by_kind"].get("shape-colour"), "shape": r["by_kind"].get("shape-what"),
                     "seconds": r["seconds"]})
        print(rows[-1], flush=True)
    trained = [r for r in rows if r["step"] != 0]
    best = max(trained, key=lambda r: (r["accuracy"], -(r["step"] or 10**9)))
    comp.load_trainable(load_file(str(weights_of[best["candidate"]])))
    comp.save_pretrained(run / "chosen")
    notes = (f"{len(examples)} validation prompts (3 images each; colour and shape questions), K = {args.k}. "
             f"Chosen: **{best['candidate']}** (highest accuracy; ties go to the earlier checkpoint).")
    write_results(args.out, "Interleaved soft model: checkpoint choice on the validation split", rows,
                  notes=notes, extra={"chosen": best["candidate"], "k": args.k, "split": "validation",
                                      "run": str(run)})
    print(notes)


if __name__ == "__main__":
    main()
