"""benchmarks/equal_budget.py on tiny models: icae / kv rows and HARD+SOFT pipelines decode exactly as the methods'
own ``generate()`` does, the pipeline's hard stage reuses the hard row's compression, and compressions cached on
disk come back with the seconds they took."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from test_soft import FirstStepScores  # records the first generated position's scores
from transformers import LogitsProcessorList

from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION, QAExample
from mmcompress.prompt import Prompt

ROOT = Path(__file__).resolve().parent.parent
# long enough that a quarter of the prompt covers the kept instruction and question (and their separators)
DOCS = ["The Eiffel Tower was finished in 1889 and stands on the Champ de Mars in Paris, France. It was built as the "
        "entrance arch to the World's Fair and was the tallest structure in the world for four decades.",
        "Mount Everest is the highest mountain above sea level, on the border of Nepal and China. Climbers reach its "
        "summit from the south side in Nepal or from the north side in Tibet, mostly in May."]
EXAMPLE = QAExample(id="q1", question="When was the tower finished?", answers=["1889"], documents=DOCS)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("equal_budget", ROOT / "benchmarks" / "equal_budget.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["equal_budget"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


def make_systems(bench, tiny_dir, tiny_lm, cache_dir):
    from mmcompress import create_compressor

    torch.manual_seed(0)  # slots and markers start random: the same seed gives the same (untrained) weights
    soft = {"num_slots": 4, "chunk_tokens": 16, "lora_r": 4, "device": "cpu", "dtype": "float32"}
    compressors = {"icae": create_compressor("icae", model=str(tiny_dir), **soft),
                   "kv": create_compressor("kv", model=str(tiny_dir), **soft),
                   "random": create_compressor("random", model=str(tiny_dir)),
                   "pipeline:random@0.5": create_compressor("random", model=str(tiny_dir), rate=0.5)}
    args = argparse.Namespace(soft_task="qa", pipeline_hard_rate=0.5)
    reader = bench.Reader(*tiny_lm, template=("", ""))
    return bench.Systems(reader, args, compressors, cache=bench.CompressionCache(cache_dir))


def next_token_logits(prepared):
    """The decoder's scores for the first answer token: the question read after the prepared context."""
    from mmcompress.models.decoding import cache_kwargs

    ctx = prepared.context
    ids = torch.tensor([prepared.question])
    mask = torch.cat([ctx.cache_mask, torch.ones_like(ids)], 1)
    positions = ctx.next_position[:, None] + torch.arange(ids.shape[1])[None]
    with torch.no_grad(), prepared.mode():
        out = prepared.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **cache_kwargs(prepared.model, ctx.cache))
    return out.logits[0, -1]


@pytest.mark.parametrize("method", ["icae", "kv"])
def test_encoder_soft_row_scores_like_the_methods_own_generate(bench, tiny_dir, tiny_lm, tmp_path, method):
    systems = make_systems(bench, tiny_dir, tiny_lm, tmp_path)
    compressor = systems.soft(method)
    with torch.no_grad():  # LoRA B starts at zero: give the encoder something to do, as after training
        for name, p in compressor.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    prepared = systems.prepare(method, EXAMPLE, 0.25)
    assert compressor.config.chunk_tokens == 16  # 4 slots / 0.25
    entries = prepared.context.cache_entries
    ours = next_token_logits(prepared)

    # alone, the method compresses the documents as one span (as gist and autocompressor do)
    soft = compressor.compress(Prompt.from_documents(["\n\n".join(DOCS)], instruction=DEFAULT_INSTRUCTION))
    first = FirstStepScores()
    compressor.generate(soft, EXAMPLE.question, max_new_tokens=1, logits_processor=LogitsProcessorList([first]))
    torch.testing.assert_close(ours, first.scores[0], atol=2e-4, rtol=1e-4)
    assert len([s for s in soft.items[0] if hasattr(s, "num_tokens")]) == 1
    # the cache holds the instruction, the soft tokens and the marker: nothing of the documents' text
    instruction = len(systems.reader.encode(DEFAULT_INSTRUCTION))
    assert prepared.extras["soft_tokens"] == sum(s.num_tokens for s in soft.items[0] if hasattr(s, "num_tokens"))
    assert entries == instruction + prepared.extras["soft_tokens"] + 1


def test_pipeline_reuses_the_hard_rows_compression_and_splits_the_budget(bench, tiny_dir, tiny_lm, tmp_path):
    systems = make_systems(bench, tiny_dir, tiny_lm, tmp_path)
    hard_row = bench.answer(systems, "random", EXAMPLE, 0.5, "multidoc", 1, max_new_tokens=2)
    assert systems.cache.misses == 1 and hard_row["compress_s"] > 0
    row = bench.answer(systems, "random+icae", EXAMPLE, 0.25, "multidoc", 1, max_new_tokens=2)
    assert systems.cache.hits == 1  # the pipeline's 2x hard stage is the hard row at 0.5, not recomputed
    assert row["family"] == "pipeline"
    stage = systems.pipeline("random+icae").soft_stage
    assert stage.config.chunk_tokens == 8  # the soft stage gets the rest of the budget: 0.25 / 0.5 -> 2x
    kept = [s.text for s in systems.hard("random").compress(
        Prompt.from_documents(DOCS, instruction=DEFAULT_INSTRUCTION, question=EXAMPLE.question), rate=0.5).prompt.segments
        if s.role.value == "context"]
    tok = systems.reader.tokenizer
    expected = sum(4 * -(-len(tok(t, add_special_tokens=False)["input_ids"]) // 8) for t in kept)
    assert row["soft_tokens"] == expected
    assert row["kv_entries"] == len(systems.reader.encode(DEFAULT_INSTRUCTION)) + expected + 1


def test_cached_compressions_come_back_with_their_original_seconds(bench, tiny_dir, tiny_lm, tmp_path):
    first = make_systems(bench, tiny_dir, tiny_lm, tmp_path)
    a = first.prepare("kv", EXAMPLE, 0.5)
    assert first.cache.misses == 1 and first.cache.hits == 0
    second = make_systems(bench, tiny_dir, tiny_lm, tmp_path)  # a new run: same weights, same prompt
    b = second.prepare("kv", EXAMPLE, 0.5)
    assert second.cache.hits == 1 and second.cache.misses == 0
    assert b.compress_s == a.compress_s
    torch.testing.assert_close(next_token_logits(a), next_token_logits(b))
    second.prepare("kv", EXAMPLE, 0.25)  # another ratio is another compression
    assert second.cache.misses == 1


def test_compress_only_fills_the_cache_that_the_next_run_reads(bench, tiny_dir, tiny_lm, tmp_path):
    warm = make_systems(bench, tiny_dir, tiny_lm, tmp_path)
    warm.compress_only = True
    for method in ("full", "random", "icae", "random+kv"):
        assert warm.prepare(method, EXAMPLE, 0.25) is None
    assert warm.cache.misses == 4  # random@0.25, icae, random@0.5 (the pipeline's hard stage), kv
    run = make_systems(bench, tiny_dir, tiny_lm, tmp_path)
    for method in ("random", "icae", "random+kv"):
        run.prepare(method, EXAMPLE, 0.25)
    assert (run.cache.hits, run.cache.misses) == (4, 0)


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
