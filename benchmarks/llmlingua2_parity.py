"""Parity of mmcompress's ``llmlingua2`` with the published llmlingua 0.2.2 (LLMLingua-2 path), on shared classifiers.

Both implementations run the same two token classifiers, built offline by ``benchmarks/llmlingua2_classifiers.py``
(MiniLM-L6 WordPiece with a seeded head; a tiny random XLM-R with a SentencePiece-style tokenizer), on the first
``--limit`` rows of ``../shared/data/multidoc_qa_dev.jsonl`` (documents only: llmlingua's LLMLingua-2 path ignores
the instruction and the question). llmlingua runs in the environment that ``../shared/peer/llmlingua_reference.py
setup`` builds (transformers 4.44), through ``benchmarks/llmlingua2_reference_run.py``; token counts there come from
SmolLM2's tokenizer, mmcompress's counting tokenizer. Agreement is ``../shared/peer/agreement.py`` under two
tokenizations (SmolLM2's and the classifier's own) for two renderings of our selection:

- ``selected``: ``render: tokens``, the kept words re-joined as llmlingua does - compares the selection itself;
- ``spans``: the default ``render: spans``, the original text of the kept words (casing, spacing and line breaks
  differ from llmlingua's re-joined tokens by design).

    PYTHONPATH=. python benchmarks/llmlingua2_parity.py [--limit 15]

Writes benchmarks/results/llmlingua2_parity.{json,md}, llmlingua's outputs to
``llmlingua2_parity_reference_<classifier>.jsonl`` and ours to ``llmlingua2_parity_ours_<classifier>_<render>.jsonl``. Target (issue 24): ``selected`` >= 0.98 per setting.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
DATA = SHARED / "data" / "multidoc_qa_dev.jsonl"
PEER = SHARED / "peer"
RESULTS = REPO / "benchmarks" / "results"
TARGET = 0.98
FORCE = ["\n", "?"]  # the LLMLingua-2 README's example

# setting -> (llmlingua compress_prompt kwargs, our LLMLingua2 config)
SETTINGS = {
    "rate0.33_force": (dict(rate=0.33, force_tokens=FORCE, use_context_level_filter=False),
                       dict(rate=0.33, force_tokens=FORCE, context_level_filter=False)),
    "rate0.5": (dict(rate=0.5, use_context_level_filter=False), dict(rate=0.5, context_level_filter=False)),
    # compress_prompt's default use_context_level_filter=True; ours is on by default as well
    "rate0.5_filter": (dict(rate=0.5), dict(rate=0.5)),
}


def peer_paths() -> tuple[Path, Path]:
    """The reference environment's Python and its SmolLM2 folder, as ``llmlingua_reference.py`` defines them."""
    spec = importlib.util.spec_from_file_location("llmlingua_reference", PEER / "llmlingua_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.VENV) / "bin" / "python", Path(module.MODEL)


def reference_available() -> str | None:
    """None when the reference environment is there, else why not."""
    if not (PEER / "llmlingua_reference.py").exists() or not DATA.exists():
        return f"{PEER / 'llmlingua_reference.py'} or {DATA} is absent"
    python, model = peer_paths()
    if not python.exists() or not (model / "config.json").exists():
        return f"the reference environment is not built: run `python {PEER / 'llmlingua_reference.py'} setup`"
    return None


def run_reference(python: Path, classifier: Path, counter: Path, rows_path: Path, out: Path, limit: int) -> None:
    settings = json.dumps({name: kw for name, (kw, _) in SETTINGS.items()})
    cmd = [str(python), str(REPO / "benchmarks" / "llmlingua2_reference_run.py"), str(classifier), str(counter),
           str(rows_path), str(out), settings, "--limit", str(limit)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def run_ours(classifier: Path, rows: list[dict]) -> dict[str, list[dict]]:
    """Our outputs under both renderings of one selection: ``render: tokens`` (llmlingua's re-joined words) and the
    default ``render: spans``, which is the kept units of each segment's selection rebuilt from the original text
    (what ``render: spans`` writes; computed from the same call to halve the run time)."""
    from mmcompress import Prompt
    from mmcompress.hard.llmlingua2 import LLMLingua2
    from mmcompress.text_units import Units

    out: dict[str, list[dict]] = {"selected": [], "spans": []}
    for name, (_, config) in SETTINGS.items():
        compressor = LLMLingua2(classifier=str(classifier), device="cpu", dtype="float32", render="tokens", **config)
        for row in rows:
            prompt = Prompt.from_documents(row["documents"])
            t0 = time.perf_counter()
            result = compressor.compress(prompt)
            base = dict(id=row["id"], setting=name, seconds=time.perf_counter() - t0,
                        dropped_segments=result.extras.get("llmlingua2", {}).get("dropped_segments", []))
            spans = [Units(seg.text, sel.spans).rebuild(sel.kept) for seg, sel in zip(prompt.segments, result.selections)]
            out["selected"].append(dict(base, render="tokens", compressed_prompt=result.text))
            out["spans"].append(dict(base, render="spans", compressed_prompt=prompt.separator.join(t for t in spans if t.strip())))
    return out


def fingerprint(folder: Path) -> str:
    """The classifier's files, so that llmlingua's outputs are reused only for the same classifier."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def _reusable(path: Path, rows: list[dict], sha: str) -> bool:
    if not path.exists():
        return False
    have = {(r["id"], r["setting"], json.dumps(r.get("kwargs")), r.get("classifier_sha"))
            for r in map(json.loads, path.read_text().splitlines())}
    return have == {(r["id"], name, json.dumps(kw), sha) for r in rows for name, (kw, _) in SETTINGS.items()}


def score(reference: Path, ours: Path, tokenizer: Path) -> dict:
    cmd = [sys.executable, str(PEER / "agreement.py"), str(reference), str(ours), "--tokenizer", str(tokenizer)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from common import add_common_args, apply_common_args, write_results

    from mmcompress.models.loading import cache_dir

    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                         str(RESULTS / "llmlingua2_parity"))
    ap.add_argument("--limit", type=int, default=15, help="rows of multidoc_qa_dev.jsonl (default: %(default)s)")
    ap.add_argument("--classifiers", default=str(cache_dir() / "llmlingua2-parity"),
                    help="where the two classifiers are built (once)")
    ap.add_argument("--families", default="bert,xlmr", help="classifiers to compare (default: %(default)s)")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="keep llmlingua's outputs already written for the same rows and settings (it is slow)")
    args = ap.parse_args(argv)
    apply_common_args(args)
    why = reference_available()
    if why:
        print(f"skipped: {why}")
        return 0
    from llmlingua2_classifiers import build_all

    python, counter = peer_paths()
    all_rows = [json.loads(line) for line in DATA.open()]
    rows = all_rows[: args.limit]
    classifiers = build_all(Path(args.classifiers), [d for r in all_rows for d in r["documents"]])
    classifiers = {k: v for k, v in classifiers.items() if k in args.families.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory()
    rows_path = Path(scratch.name) / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, ours_all = [], []
    for family, folder in classifiers.items():
        ref_path = out.with_name(f"{out.name}_reference_{family}.jsonl")
        sha = fingerprint(folder)
        if not (args.reuse_reference and _reusable(ref_path, rows, sha)):
            run_reference(python, folder, counter, rows_path, ref_path, args.limit)
        reference = [dict(json.loads(line), classifier_sha=sha) for line in ref_path.read_text().splitlines()]
        keys = ("id", "setting", "kwargs", "classifier_sha", "compressed_prompt", "seconds")
        ref_path.write_text("".join(json.dumps({k: r[k] for k in keys}) + "\n" for r in reference))
        scores = {}
        for label, ours in run_ours(folder, rows).items():
            ours_path = out.with_name(f"{out.name}_ours_{family}_{label}.jsonl")
            ours_path.write_text("".join(json.dumps(r) + "\n" for r in ours))
            scores[label] = {"smollm2": score(ref_path, ours_path, counter), "classifier": score(ref_path, ours_path, folder)}
            ours_all += [dict(r, classifier=family) for r in ours]
        for name in SETTINGS:
            ref_rows = [r for r in reference if r["setting"] == name]
            sel = min(scores["selected"]["smollm2"][name], scores["selected"]["classifier"][name])
            table.append({"classifier": family, "setting": name, "rows": len(ref_rows),
                          "selected_smollm2": scores["selected"]["smollm2"][name],
                          "selected_classifier": scores["selected"]["classifier"][name],
                          "spans_smollm2": scores["spans"]["smollm2"][name],
                          "spans_classifier": scores["spans"]["classifier"][name],
                          "met": sel >= TARGET,
                          "reference_s_per_call": round(sum(r["seconds"] for r in ref_rows) / max(1, len(ref_rows)), 3),
                          "ours_s_per_call": round(sum(r["seconds"] for r in ours_all if r["setting"] == name
                                                       and r["classifier"] == family and r["render"] == "tokens")
                                                   / max(1, len(ref_rows)), 3)})
    scratch.cleanup()
    notes = ("Agreement: `../shared/peer/agreement.py` (difflib ratio of token sequences, 1.0 = identical) under SmolLM2's "
             "tokenizer and the classifier's own. `selected`: our selection re-joined as llmlingua does "
             f"(`render: tokens`); `spans`: our default rendering (original text of the kept words). Target: selected "
             f">= {TARGET}. Settings: {json.dumps({k: v[0] for k, v in SETTINGS.items()})} (llmlingua kwargs).")
    write_results(out, f"LLMLingua-2 parity with llmlingua 0.2.2 ({len(rows)} rows of multidoc_qa_dev.jsonl)", table,
                  notes=notes, extra={"target": TARGET, "settings": {k: v[0] for k, v in SETTINGS.items()},
                                      "classifiers": {k: v.name for k, v in classifiers.items()}})
    print((out.with_suffix(".md")).read_text())
    return 0 if all(r["met"] for r in table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
