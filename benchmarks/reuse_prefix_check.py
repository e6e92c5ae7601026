"""Does ``reuse_prefix`` change any output? LLMLingua / LongLLMLingua with the token-level step's re-feed as the
reference runs it (``reuse_prefix=False``) and with the tokens before each window's first drop kept cached (the
default), on the golden rows of ``llmlingua_parity.py``, in its three settings.

    PYTHONPATH=. python benchmarks/reuse_prefix_check.py [--limit 10] [--first-pass ranking|window|full]

For each setting: how many compressed prompts are identical both ways, and the tokens the token-level step fed
(both streams, re-feeds included). Writes benchmarks/results/reuse_prefix_check.{json,md}.
"""
from __future__ import annotations

import argparse
import json

from common import add_common_args, apply_common_args, write_results
from llmlingua_parity import DATA, GOLDEN, SETTINGS, ours_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=10, help="golden rows (the first N; the parity runs' validation)")
    ap.add_argument("--first-pass", default=None, choices=["ranking", "window", "full"],
                    help="first_pass for every setting (default: each method's own default)")
    add_common_args(ap, "benchmarks/results/reuse_prefix_check")
    args = ap.parse_args()
    apply_common_args(args)

    from mmcompress.models import load_language_model
    from mmcompress.scoring import iterative

    ids: list[str] = []
    for line in GOLDEN.open():
        if (row_id := json.loads(line)["id"]) not in ids:
            ids.append(row_id)
    ids = ids[: args.limit]
    rows = [r for r in map(json.loads, DATA.open()) if r["id"] in ids]
    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    fed: dict[tuple[str, bool], int] = {}
    run, init = iterative.IterativeCompressor.run, iterative.IterativeCompressor.__init__
    texts: dict[bool, dict] = {}
    setting_now = [""]
    try:
        for reuse in (False, True):
            def counted(self, *a, **k):
                result = run(self, *a, **k)
                key = (setting_now[0], self.reuse_prefix)
                fed[key] = fed.get(key, 0) + result.forward_tokens
                return result

            def with_reuse(self, *a, _reuse=reuse, **k):
                init(self, *a, **{**k, "reuse_prefix": _reuse})

            iterative.IterativeCompressor.run, iterative.IterativeCompressor.__init__ = counted, with_reuse
            texts[reuse] = {}
            for setting in SETTINGS:
                setting_now[0] = setting
                for out in ours_rows(rows, set(ids), lm, args.first_pass, settings={setting: SETTINGS[setting]}):
                    texts[reuse][setting, out["id"]] = out["compressed_prompt"]
    finally:
        iterative.IterativeCompressor.run, iterative.IterativeCompressor.__init__ = run, init
    results = []
    for setting in SETTINGS:
        keys = [k for k in texts[False] if k[0] == setting]
        same = sum(texts[False][k] == texts[True][k] for k in keys)
        ref, new = fed[setting, False], fed[setting, True]
        results.append({"setting": setting, "first_pass": args.first_pass or "default", "rows": len(keys),
                        "identical outputs": same, "tokens fed, reference re-feed": ref,
                        "tokens fed, reuse_prefix": new, "saved": f"{1 - new / ref:.1%}"})
        print(results[-1], flush=True)
    write_results(args.out, "reuse_prefix: outputs and tokens fed against the reference's re-feed", results,
                  notes="Tokens fed: the token-level step's forward tokens summed over the rows (both contrastive "
                        "streams for longllmlingua). Identical: the compressed prompt is the same string both ways.")


if __name__ == "__main__":
    main()
