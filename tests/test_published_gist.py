"""GIST releases (jayelm/gisting LLaMA layout: full weights and weight diff) loaded by ``create_compressor(folder)``
and matched against the official code's outputs.

``tests/fixtures/published/gist`` holds a tiny random ``GistLlamaForCausalLM`` release as full weights
(``llama-gist-tiny``), as the weight diff the hub release is (``llama-gist-diff-tiny``, written by gisting's own
``weight_diff.make_diff``) and its base (``llama-base-tiny``); ``golden.json`` holds what jayelm/gisting@3be0d062
computes under transformers 4.28.0 (``tests/published_reference/gist.py``): the gist KV of the instruction, the
next-token logits of the input read against it with gist caching, the same logits from one pass under
``make_gist_mask``, and a greedy continuation.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmcompress import Pipeline, create_compressor
from mmcompress.errors import ConfigError
from mmcompress.models.compat import cache_kwargs
from mmcompress.models.rotary import shift_keys
from mmcompress.prompt import Prompt, Role, TextSegment
from mmcompress.results import SoftSegment
from mmcompress.soft.gist import AFTER, GIST, PROMPT, stack_row_caches
from mmcompress.soft.published.gist import gist_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "gist"
FULL, DIFF, BASE = FIXTURE / "llama-gist-tiny", FIXTURE / "llama-gist-diff-tiny", FIXTURE / "llama-base-tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def releases():
    """(layout, number of gists) -> compressor; the diff is recovered from its base as gisting's weight_diff does."""
    out = {}
    for k in sorted({c["num_gist_tokens"] for c in GOLDEN["cases"]}):
        out[("full", k)] = create_compressor(str(FULL), num_slots=k)
        out[("diff", k)] = create_compressor(str(DIFF), base=str(BASE), num_slots=k)
    return out


@torch.no_grad()
def next_token_logits(compressor, soft) -> torch.Tensor:
    """The decoder's last logits for the text after the gists, read against the gists' cache (one row)."""
    layers, position, tail = compressor._row_cache(soft.items[0])
    context = stack_row_caches(compressor.decoder, [(layers, position)])
    ids = torch.tensor([compressor.tokenizer(tail, add_special_tokens=False)["input_ids"]])
    mask = torch.cat([context.cache_mask, torch.ones_like(ids)], 1)
    positions = context.next_position[:, None] + torch.arange(ids.shape[1])[None]
    out = compressor.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **cache_kwargs(compressor.decoder, context.cache))
    return out.logits[0, -1]


def test_release_folders_are_recognised_and_mapped(releases):
    compressor = releases[("full", 1)]
    cfg = compressor.config
    assert compressor.name == "gist" and cfg.model == str(FULL)
    assert (cfg.num_slots, cfg.finetune, cfg.tied_gists, cfg.chunk_bos) == (1, "frozen", True, True)
    gist_id = compressor.tokenizer.convert_tokens_to_ids("<GIST>")
    assert torch.equal(compressor.module.gist_embeddings[0], compressor.llm.get_input_embeddings().weight[gist_id])
    assert list(compressor.trainable_state_dict()) == ["gist_embeddings"]


@pytest.mark.parametrize("layout", ["full", "diff"])
@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])))
def test_gist_kv_and_logits_match_the_official_code(releases, layout, index):
    case = GOLDEN["cases"][index]
    k = case["num_gist_tokens"]
    compressor = releases[(layout, k)]
    soft = compressor.compress(gist_prompt(case["instruction"], case["input"]))
    segment = soft.items[0][0]
    assert compressor.chunk_ids(segment.text) == [case["instruction_ids"][:-k]]  # BOS + instruction, as encode() gives
    assert segment.num_tokens == k
    for (keys, values), golden_keys, golden_values in zip(segment.kv, case["gist_keys"], case["gist_values"]):
        assert (values - torch.tensor(golden_values)).abs().max() < TOLERANCE
        # mmcompress keeps gist keys at positions 0..K-1; the reference keeps them where they were (gist_offset)
        moved = shift_keys(compressor.decoder, keys[None], case["gist_offset"])[0]
        assert (moved - torch.tensor(golden_keys)).abs().max() < TOLERANCE
    tail = compressor._row_cache(soft.items[0])[2]
    assert compressor.tokenizer(tail, add_special_tokens=False)["input_ids"] == case["input_ids"]
    logits = next_token_logits(compressor, soft)
    assert (logits - torch.tensor(case["next_token_logits"])).abs().max() < TOLERANCE
    assert (logits - torch.tensor(case["full_masked_logits"])).abs().max() < TOLERANCE
    _, generation = compressor.generate(soft, max_new_tokens=len(case["generated_ids"]), return_details=True)
    assert generation.token_ids == [case["generated_ids"]]


@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])))
def test_training_mask_matches_make_gist_mask(releases, index):
    """mmcompress's training forward (gist_mask over [text][gists][after]) gives the reference's full masked pass."""
    case = GOLDEN["cases"][index]
    k = case["num_gist_tokens"]
    compressor = releases[("full", k)]
    text, after = case["instruction_ids"][:-k], case["input_ids"]
    ids = torch.tensor([text + [0] * k + after])
    segments = torch.tensor([[PROMPT] * len(text) + [GIST] * k + [AFTER] * len(after)])
    with torch.no_grad():
        logits = compressor.module(ids, segments).logits[0, -1]
    assert (logits - torch.tensor(case["full_masked_logits"])).abs().max() < TOLERANCE


def test_batched_compress_and_generate_equal_one_by_one(releases):
    compressor = releases[("full", 1)]
    prompts = [gist_prompt(c["instruction"], c["input"]) for c in GOLDEN["cases"]]
    batch = compressor.compress_batch(prompts)
    alone = [compressor.compress(p) for p in prompts]
    for row, single in zip(batch.items, alone):
        for (k1, v1), (k2, v2) in zip(row[0].kv, single.items[0][0].kv):
            assert torch.allclose(k1, k2, atol=TOLERANCE) and torch.allclose(v1, v2, atol=TOLERANCE)
    assert batch.compressed_tokens == [a.compressed_tokens[0] for a in alone]
    assert compressor.generate(batch, max_new_tokens=4) == [compressor.generate(a, max_new_tokens=4)[0] for a in alone]


def test_text_and_soft_segments_mix_in_one_prompt(releases):
    compressor = releases[("full", 1)]
    prompt = Prompt((TextSegment("Background:", role=Role.INSTRUCTION),
                     TextSegment("Paris is the capital of France.", role=Role.CONTEXT),
                     TextSegment("What is the capital of France?", role=Role.QUESTION)))
    soft = compressor.compress(prompt)
    assert [type(p).__name__ for p in soft.items[0]] == ["TextSegment", "SoftSegment", "TextSegment"]
    layers, position, _ = compressor._row_cache(soft.items[0])
    kept = len(compressor.tokenizer("Background:", add_special_tokens=False)["input_ids"])
    assert position == kept + 1 and layers[0][0].shape[-2] == kept + 1  # kept text read in, then one gist
    assert len(compressor.generate(soft, max_new_tokens=3)) == 1


def test_hard_then_soft_pipeline_on_the_release(releases):
    compressor = releases[("full", 1)]
    pipe = Pipeline([{"compressor": "truncate", "model": str(FULL), "rate": 0.5}, compressor])
    result = pipe.compress(["Super Bowl 50 was an American football game. The game was played on February 7, 2016."],
                           question="When was the game played?")
    assert [s["method"] for s in result.extras["stages"]] == ["truncate", "gist"]
    assert any(isinstance(p, SoftSegment) for p in result.items[0])
    assert len(pipe.generate(result, max_new_tokens=3)) == 1


def test_wrong_or_incomplete_releases_get_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="looks like a weight diff"):
        create_compressor(str(DIFF))  # without its base
    with pytest.raises(ConfigError, match="not a model folder"):
        create_compressor(str(DIFF), base=str(tmp_path))
    folder = tmp_path / "release"
    shutil.copytree(FULL, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(BASE / name, folder / name)
    with pytest.raises(ConfigError, match="no <GIST> token"):
        create_compressor(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FULL / name, folder / name)
    config = json.loads((FULL / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GistT5ForConditionalGeneration"]}))
    with pytest.raises(ConfigError, match="model_type 'llama', not 't5'"):
        create_compressor(str(folder))
