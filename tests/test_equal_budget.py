"""benchmarks/equal_budget.py on tiny models: its rows are the QA harness's numbers (the script is a thin loop over
:func:`mmcompress.evaluation.systems.build_system`), the pipeline's hard stage reuses the hard row's compression,
compressions cached on disk come back with the seconds they took, and cache files cannot run code."""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import perturb

from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION, QAExample, evaluate
from mmcompress.evaluation.reader import Reader
from mmcompress.evaluation.systems import build_system
from mmcompress.prompt import Prompt

ROOT = Path(__file__).resolve().parent.parent
# long enough that a quarter of the prompt covers the kept instruction and question (and their separators)
DOCS = ["The Eiffel Tower was finished in 1889 and stands on the Champ de Mars in Paris, France. It was built as the "
        "entrance arch to the World's Fair and was the tallest structure in the world for four decades.",
        "Mount Everest is the highest mountain above sea level, on the border of Nepal and China. Climbers reach its "
        "summit from the south side in Nepal or from the north side in Tibet, mostly in May."]
EXAMPLE = QAExample(id="q1", question="When was the tower finished?", answers=["1889"], documents=DOCS)
EXAMPLES = [EXAMPLE, QAExample(id="q2", question="Where is Mount Everest?", answers=["Nepal"], documents=DOCS[::-1],
                               gold_index=1)]
EXAMPLE.gold_index = 0
METHODS = ["full", "random", "snapkv", "random+snapkv", "icae", "random+icae"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("equal_budget", ROOT / "benchmarks" / "equal_budget.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["equal_budget"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reader(tiny_lm):
    return Reader(model=tiny_lm[0], tokenizer=tiny_lm[1], max_new_tokens=3)


def tiny_compressors(tiny_dir):
    """The compressors the methods are built from, each created from the same seed (the same untrained weights)."""
    from mmcompress import create_compressor

    torch.manual_seed(0)
    icae = create_compressor("icae", model=str(tiny_dir), num_slots=4, chunk_tokens=16, lora_r=4, device="cpu",
                             dtype="float32")
    perturb(icae)
    return {"icae": icae, "random": create_compressor("random", model=str(tiny_dir)),
            "random@0.5": create_compressor("random", model=str(tiny_dir), rate=0.5)}


def make_from(compressors):
    return lambda name, rate=None: compressors[name if rate is None else f"{name}@{rate}"]


def args_for(tmp_path, **changes):
    args = argparse.Namespace(soft_task="qa", pipeline_hard_rate=0.5, max_new_tokens=3, cache=str(tmp_path / "cache"),
                              icae=None, kv=None, gist=None, autocompressor=None, methods=METHODS)
    vars(args).update(changes)
    return args


def test_the_scripts_numbers_are_the_harness_numbers(bench, tiny_dir, reader, tmp_path):
    data = tmp_path / "multidoc.jsonl"
    data.write_text("".join(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers,
                                        "documents": ex.documents, "gold_index": ex.gold_index}) + "\n"
                            for ex in EXAMPLES))
    out = tmp_path / "eb"
    argv = ["--data", "multidoc", "--methods", *METHODS, "--rates", "0.5", "0.25", "--max-new-tokens", "3",
            "--cache", str(tmp_path / "cache"), "--out", str(out), "--fresh"]
    assert bench.main(argv, reader, data_files={"multidoc": data}, preloaded=tiny_compressors(tiny_dir)) == 0
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["machine"]["cpu"] and written["command"]  # benchmarks/common.py write_results
    assert "| kv_fraction |" in out.with_suffix(".md").read_text()
    rows = {(r["method"], r["rate"], r["id"]): r for r in written["examples"]}
    table = {(t["method"], t["budget"]): t for t in written["rows"]}
    assert len(rows) == 2 * (1 + 2 * (len(METHODS) - 1)) and len(table) == 1 + 2 * (len(METHODS) - 1)

    # the harness, on systems built from fresh compressors of the same seed
    compressors = tiny_compressors(tiny_dir)
    for method in METHODS:
        system = build_system(method, reader, through_cache=True, make=make_from(compressors))
        for rate in [1.0] if method == "full" else [0.5, 0.25]:
            report = evaluate(EXAMPLES, [system], [rate], None)
            outputs = {o.id: o for o in system.run(EXAMPLES, rate)}
            for ex in EXAMPLES:
                row, harness = rows[method, rate, ex.id], outputs[ex.id]
                assert row["answer"] == harness.answer, (method, rate)
                assert row["kv_entries"] == harness.extras["kv_entries"], (method, rate)
                assert row["context_tokens"] == harness.extras["context_tokens"]
                assert row["family"] == system.family
            result = evaluate(EXAMPLES, [system], [rate], reader).results[0]
            assert table[method, rate]["f1"] == pytest.approx(result.f1)
            assert table[method, rate]["contains"] == pytest.approx(result.contains)
            assert report.results[0].rate == pytest.approx(
                sum(o.compressed_tokens for o in outputs.values()) / sum(o.origin_tokens for o in outputs.values()))
    assert table["random+snapkv", 0.25]["family"] == table["random+icae", 0.25]["family"] == "pipeline"
    full = table["full", 1.0]
    assert full["kv_fraction"] == 1.0 and table["snapkv", 0.25]["kv_fraction"] == pytest.approx(0.25, abs=0.02)


def test_a_bad_method_is_a_one_line_error_before_any_example_runs(bench, reader, tmp_path, capsys):
    argv = ["--methods", "random+nosuch", "--out", str(tmp_path / "eb"), "--cache", ""]
    assert bench.main(argv, reader, data_files={}) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nosuch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "eb.json").exists()


def test_pipeline_reuses_the_hard_rows_compression(bench, tiny_dir, reader, tmp_path):
    args = args_for(tmp_path)
    cache = bench.CompressionCache(tmp_path / "cache")
    compressors = bench.Compressors(args, cache, tiny_compressors(tiny_dir))
    hard, pipeline = (build_system(m, reader, through_cache=True, make=compressors) for m in ("random", "random+icae"))
    hard_row = bench.answer(hard, EXAMPLE, 0.5, "multidoc", 1, cache)
    assert cache.misses == 1 and hard_row["compress_s"] > 0
    row = bench.answer(pipeline, EXAMPLE, 0.25, "multidoc", 1, cache)
    assert cache.hits == 1  # the pipeline's 2x hard stage is the hard row at 0.5, not recomputed
    assert row["family"] == "pipeline" and row["soft_tokens"] > 0
    assert row["compress_s"] >= hard_row["compress_s"]  # the cached hard stage counts with its original seconds


def test_cached_compressions_come_back_with_their_original_seconds(bench, tiny_dir, reader, tmp_path):
    def kv_system():
        from mmcompress import create_compressor

        torch.manual_seed(0)
        kv = create_compressor("kv", model=str(tiny_dir), num_slots=4, chunk_tokens=16, lora_r=4, device="cpu",
                               dtype="float32")
        cache = bench.CompressionCache(tmp_path / "cache")
        return build_system("kv", reader, make=bench.Compressors(args_for(tmp_path), cache, {"kv": kv})), cache

    first, first_cache = kv_system()
    a = bench.answer(first, EXAMPLE, 0.5, "multidoc", 1, first_cache)
    assert first_cache.misses == 1 and first_cache.hits == 0
    second, second_cache = kv_system()  # a new run: same weights, same prompt
    b = bench.answer(second, EXAMPLE, 0.5, "multidoc", 1, second_cache)
    assert second_cache.hits == 1 and second_cache.misses == 0
    assert b["compress_s"] == a["compress_s"] and b["answer"] == a["answer"] and b["kv_entries"] == a["kv_entries"]
    bench.answer(second, EXAMPLE, 0.25, "multidoc", 1, second_cache)  # another ratio is another compression
    assert second_cache.misses == 1


def test_compress_only_fills_the_cache_that_the_next_run_reads(bench, tiny_dir, reader, tmp_path):
    methods = ["full", "random", "icae", "random+icae", "snapkv"]

    def systems():
        cache = bench.CompressionCache(tmp_path / "cache")
        compressors = bench.Compressors(args_for(tmp_path), cache, tiny_compressors(tiny_dir))
        return bench.build_systems(args_for(tmp_path, methods=methods), reader, compressors), cache

    warm, warm_cache = systems()
    for system in warm:
        system.compress(EXAMPLE, 0.25)
    assert warm_cache.misses == 4  # random@0.25, icae, random@0.5 (the pipeline's hard stage), icae after it
    run, run_cache = systems()
    for system in run:
        bench.answer(system, EXAMPLE, 0.25, "multidoc", 1, run_cache)
    assert (run_cache.hits, run_cache.misses) == (4, 0)


def test_a_reused_row_is_keyed_by_the_weights_it_was_computed_with(bench, tmp_path):
    import os

    folder = tmp_path / "icae"
    args = argparse.Namespace(max_new_tokens=10, soft_task="qa", pipeline_hard_rate=0.5, icae=str(folder), kv=None)
    before = bench.row_key(args, "multidoc", "longllmlingua+icae", 0.25, EXAMPLE)
    assert bench.row_key(args, "multidoc", "longllmlingua", 0.25, EXAMPLE)["weights"] == {}
    folder.mkdir()
    (folder / "trainable.safetensors").write_bytes(b"x")  # the trained compressor appears: its rows are recomputed
    saved = bench.row_key(args, "multidoc", "longllmlingua+icae", 0.25, EXAMPLE)
    assert saved != before and saved["weights"]["icae"]["size"] == 1
    os.utime(folder / "trainable.safetensors", (1, 1))
    assert bench.row_key(args, "multidoc", "longllmlingua+icae", 0.25, EXAMPLE) != saved
    assert bench.row_key(args, "multidoc", "longllmlingua+icae", 0.1, EXAMPLE) != bench.row_key(
        args, "multidoc", "longllmlingua+icae", 0.25, EXAMPLE)


def test_llmlingua2_rows_are_keyed_by_the_default_classifier(bench, tmp_path, monkeypatch):
    args = argparse.Namespace(max_new_tokens=10, soft_task="qa", pipeline_hard_rate=0.5)
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w")
    monkeypatch.setenv("MMCOMPRESS_LLMLINGUA2_CLASSIFIER", str(first))
    before = bench.row_key(args, "longdoc", "llmlingua2", 0.5, EXAMPLE)
    assert bench.row_key(args, "longdoc", "llmlingua", 0.5, EXAMPLE)["classifier"] is None
    monkeypatch.setenv("MMCOMPRESS_LLMLINGUA2_CLASSIFIER", str(second))  # a training run registered a new default
    assert bench.row_key(args, "longdoc", "llmlingua2", 0.5, EXAMPLE) != before


def test_rows_of_files_written_before_write_results_are_read(bench, tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"meta": {"notes": {"x": "y"}}, "table": [], "rows": [{"id": "a"}]}))
    assert bench.load_previous(old) == ([{"id": "a"}], {"notes": {"x": "y"}})
    assert bench.load_previous(tmp_path / "none.json") == ([], {})


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_cached_compressions_load_without_running_code(bench, tmp_path):
    cache = bench.CompressionCache(tmp_path / "cache")
    prompt = Prompt.from_documents(DOCS, question=EXAMPLE.question)
    from mmcompress.results import CompressedPrompt, SegmentSelection

    value = CompressedPrompt(prompt, prompt, [SegmentSelection.whole(DOCS[0], True), None, None], 10, 10, "random")
    assert cache.get({"k": 1}, lambda: value) is value and cache.misses == 1
    again = cache.get({"k": 1}, lambda: None)  # a hit: the dataclass and its numpy masks come back from disk
    assert cache.hits == 1 and again.text == value.text and again.selections[0].kept.tolist() == [True]
    marker = tmp_path / "code-ran"
    path = next((tmp_path / "cache").glob("*.pt"))
    torch.save((_Planted(marker), 0.0), path)
    with pytest.raises(SystemExit, match="cannot be loaded safely"):
        cache.get({"k": 1}, lambda: None)
    assert not marker.exists()
