"""FLAN-T5 GIST releases (jayelm/gisting ``GistT5ForConditionalGeneration``, as ``jayelm/flan-t5-xxl-gist-1``) loaded by
``create_compressor(folder)`` and matched against the official code's outputs.

``tests/fixtures/published/gist_t5/flan-t5-gist-tiny`` is a tiny random FLAN-T5 gist release written by gisting's own
class (``save_pretrained``: ``pytorch_model.bin``, ``<GIST>`` as the additional special token); ``golden.json`` holds
what jayelm/gisting@3be0d062 computes under transformers 4.28.0 (``tests/published_reference/gist_t5.py``): the gists'
encoder keys/values and last states for the instruction (``get_gist_activations``), the decoder's first-step logits
and a greedy continuation with the input read after the cached gists (src/compress.py:121-201), and the same logits
from one pass under the training masks (``make_gist_mask``, ``make_mask_pre_first_gist``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmcompress import Pipeline, create_compressor
from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.results import SoftSegment
from mmcompress.soft.published.gist import gist_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "gist_t5"
RELEASE = FIXTURE / "flan-t5-gist-tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TOLERANCE = 1e-4


def max_abs(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@pytest.fixture(scope="module")
def releases():
    """number of gists -> the release loaded with that many (the cases use 1 and 2)."""
    return {k: create_compressor(str(RELEASE), num_slots=k, dtype="float32", device="cpu")
            for k in sorted({c["num_gist_tokens"] for c in GOLDEN["cases"]})}


def prompt_of(case):
    return gist_prompt(case["instruction"], case["input"], suffix="")


def test_the_release_folder_is_recognised_and_mapped(releases):
    compressor = releases[1]
    assert compressor.name == "gist_t5" and compressor.config.model == str(RELEASE)
    assert type(compressor.llm).__name__ == "T5ForConditionalGeneration"
    assert compressor.gist_id == len(compressor.tokenizer) - 1 == compressor.llm.config.vocab_size - 1
    assert compressor.trainable_state_dict() == {}  # used as released


@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])))
def test_gists_and_logits_match_the_official_code(releases, index):
    case = GOLDEN["cases"][index]
    k = case["num_gist_tokens"]
    compressor = releases[k]
    soft = compressor.compress(prompt_of(case))
    segment = soft.items[0][0]
    assert isinstance(segment, SoftSegment) and segment.num_tokens == k
    assert segment.origin_tokens == len(case["instruction_ids"]) - k
    assert len(segment.kv) == len(case["gist_keys"])
    assert max(max_abs(key, g) for (key, _), g in zip(segment.kv, case["gist_keys"])) < TOLERANCE
    assert max(max_abs(value, g) for (_, value), g in zip(segment.kv, case["gist_values"])) < TOLERANCE
    assert max_abs(segment.encoder_states, case["gist_hidden"]) < TOLERANCE
    logits = compressor.next_token_logits(soft)[0]
    assert max_abs(logits, case["next_token_logits"]) < TOLERANCE
    assert max_abs(logits, case["full_masked_logits"]) < TOLERANCE  # = one pass under the training masks
    assert compressor.generate(soft, max_new_tokens=len(case["generated_ids"])) == [case["generated_text"]]


def test_the_input_is_read_as_the_reference_tokenizes_it(releases):
    """The encoder's rows are [gists] + the input tokenized after a gist token (with </s>), src/compress.py:148-167."""
    compressor = releases[1]
    for case in (c for c in GOLDEN["cases"] if c["num_gist_tokens"] == 1):
        states, mask = compressor.encoder_outputs(compressor.compress(prompt_of(case)))
        assert states.shape[1] == 1 + len(case["input_ids"]) and bool(mask.all())


def test_batched_compress_and_generate_equal_one_by_one(releases):
    compressor = releases[2]
    prompts = [prompt_of(c) for c in GOLDEN["cases"]] + [gist_prompt("Name three colours.", "", suffix="")]
    batch = compressor.compress_batch(prompts)
    alone = [compressor.compress(p) for p in prompts]
    for row, single in zip(batch.items, alone):
        for (k1, v1), (k2, v2) in zip(row[0].kv, single.items[0][0].kv):
            assert max_abs(k1, k2) < TOLERANCE and max_abs(v1, v2) < TOLERANCE
        assert max_abs(row[0].encoder_states, single.items[0][0].encoder_states) < TOLERANCE
    assert batch.compressed_tokens == [a.compressed_tokens[0] for a in alone]
    together = compressor.next_token_logits(batch)
    assert max(max_abs(together[i], compressor.next_token_logits(a)[0]) for i, a in enumerate(alone)) < TOLERANCE
    assert compressor.generate(batch, max_new_tokens=4) == [compressor.generate(a, max_new_tokens=4)[0] for a in alone]


def test_accounting_and_a_question_passed_at_generation(releases):
    compressor = releases[1]
    case = GOLDEN["cases"][0]
    soft = compressor.compress(gist_prompt(case["instruction"], suffix=""))
    kept = 0  # nothing kept: the decoder reads the gist and </s>
    assert soft.compressed_tokens == [1 + kept] and soft.origin_tokens[0] == len(case["instruction_ids"]) - 1
    # the input given to generate() reads as the kept input would
    with_input = compressor.next_token_logits(soft, f"\nInput: {case['input']}")[0]
    assert max_abs(with_input, case["next_token_logits"]) < TOLERANCE


def test_hard_then_soft_pipeline_on_the_release(releases):
    compressor = releases[1]
    pipe = Pipeline([{"compressor": "truncate", "model": str(RELEASE), "rate": 0.5}, compressor])
    result = pipe.compress(["Super Bowl 50 was an American football game. The game was played on February 7, 2016."],
                           question="\nInput: When was the game played?")
    assert [s["method"] for s in result.extras["stages"]] == ["truncate", "gist_t5"]
    assert any(isinstance(p, SoftSegment) for p in result.items[0])
    assert len(pipe.generate(result, max_new_tokens=3)) == 1


def test_prompts_it_cannot_read_and_damaged_releases_are_clear_errors(releases, tmp_path):
    compressor = releases[1]
    with pytest.raises(InvalidPromptError, match="must not contain <GIST>"):
        compressor.compress("Instruction: copy <GIST> here\n")
    two_spans = compressor.compress(["Paris is the capital.", "Berlin is the capital."])
    with pytest.raises(InvalidPromptError, match="one gist span"):
        compressor.generate(two_spans)
    with pytest.raises(ConfigError, match="encoder-decoder"):
        compressor.decoder_cache(two_spans.items[0])
    with pytest.raises(ConfigError, match="takes no base="):
        create_compressor(str(RELEASE), base=str(RELEASE))
    folder = tmp_path / "release"
    shutil.copytree(RELEASE, folder)
    special = json.loads((folder / "special_tokens_map.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "<GIST>"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in special.items()
                                                                if k != "additional_special_tokens"}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("additional_special_tokens", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no <GIST> token"):
        create_compressor(str(folder))


def test_save_load_round_trip_and_bfloat16(releases, tmp_path):
    compressor = releases[1]
    case = GOLDEN["cases"][0]
    compressor.save_pretrained(tmp_path / "saved")
    again = create_compressor(str(tmp_path / "saved"))
    assert again.name == "gist_t5" and again.config.to_dict() == compressor.config.to_dict()
    soft = again.compress(prompt_of(case))
    assert max_abs(again.next_token_logits(soft)[0], case["next_token_logits"]) < TOLERANCE
    half = create_compressor(str(RELEASE), dtype="bfloat16", device="cpu")  # the released models' usual dtype
    logits = half.next_token_logits(half.compress(prompt_of(case)))[0]
    assert logits.dtype == torch.float32 and max_abs(logits, case["next_token_logits"]) < 0.5
    assert len(half.generate(half.compress(prompt_of(case)), max_new_tokens=2)) == 1
