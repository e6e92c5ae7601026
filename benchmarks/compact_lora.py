"""Shrink a saved soft compressor's LoRA adapters to a lower rank without training (each trained update replaced by
its best approximation at that rank, as a recipe stage with a lower ``lora_r`` starts from): writes a saved folder
that loads like any other, with the cut recorded in its ``mmcompress_config.json`` (``"compacted"``). Check it on the
validation split before shipping it.

    PYTHONPATH=. python benchmarks/compact_lora.py --source mmcompress/trained/soft-smollm2-4x --rank 8 \\
        --out runs/compact/soft-4x-r8
    PYTHONPATH=. python benchmarks/soft_slot_control.py --compressor runs/compact/soft-4x-r8 --split validation
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from common import machine_stamp


def main(argv=None) -> int:
    from safetensors.torch import save_file

    from mmcompress.factory import load_saved_weights, read_saved_meta
    from mmcompress.models.lora import shrink_adapters
    from mmcompress.soft.base import CONFIG_FILE, WEIGHTS_FILE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="a saved compressor folder (save_pretrained or a shipped one)")
    ap.add_argument("--out", required=True, help="the folder to write")
    ap.add_argument("--rank", type=int, default=0, help="new rank of the encoder adapter (0: keep)")
    ap.add_argument("--decoder-rank", type=int, default=0, help="new rank of the decoder adapter (0: keep)")
    args = ap.parse_args(argv)

    source, out = Path(args.source), Path(args.out)
    meta = read_saved_meta(source, CONFIG_FILE)
    saved = dict(meta["config"])
    config = dict(saved)
    if args.rank:  # the new adapter's scale is 1 (alpha = rank); the saved scale is folded into the factors
        config["lora_r"] = config["lora_alpha"] = args.rank
    if args.decoder_rank:
        config["decoder_lora_r"] = args.decoder_rank
    weights, cuts = shrink_adapters(load_saved_weights(source / WEIGHTS_FILE), saved, SimpleNamespace(**config))
    if not cuts:
        print(f"error: nothing to cut: {source} has encoder rank {saved.get('lora_r')} and decoder rank "
              f"{saved.get('decoder_lora_r', 0)}; give a lower --rank or --decoder-rank", file=sys.stderr)
        return 2
    record = {"from": str(source), "machine": machine_stamp(),
              **{adapter: {"rank": [old, new], "energy_kept": round(kept, 5)} for adapter, (old, new, kept) in cuts.items()}}
    meta["config"], meta["compacted"] = config, meta.get("compacted", []) + [record]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    size = (out / WEIGHTS_FILE).stat().st_size
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}), f"{size / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
