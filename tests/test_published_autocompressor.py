"""AutoCompressor releases (princeton-nlp/AutoCompressors layout, Llama and OPT) loaded by
``create_compressor(folder)`` and matched against the official code's outputs.

``tests/fixtures/published/autocompressor/{llama,opt}-tiny`` are tiny random ``LlamaAutoCompressorModel`` /
``OPTAutoCompressorModel`` releases; ``golden.json`` holds what princeton-nlp/AutoCompressors@80352a42 computes on
them under transformers 4.34.0 (``tests/published_reference/autocompressor.py``): the accumulated summary vectors of a
context cut into 24-token segments, and the next-token logits and a greedy continuation of a prompt read after them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmcompress import Pipeline, create_compressor
from mmcompress.errors import ConfigError
from mmcompress.prompt import Prompt, Role, TextSegment
from mmcompress.results import SoftSegment
from mmcompress.soft.base import left_pad

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "autocompressor"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TOLERANCE = 1e-4
KINDS = ("llama", "opt")


@pytest.fixture(scope="module")
def loaded():
    return {kind: create_compressor(str(FIXTURE / f"{kind}-tiny"), chunk_tokens=24) for kind in KINDS}


def next_token_logits(compressor, pieces, question) -> torch.Tensor:
    """The decoder's last logits on a soft prompt, with the positions generate() uses."""
    with torch.no_grad():
        parts = compressor.decoder_parts(pieces, "qa", question)
        inputs, mask = left_pad([torch.cat([p for p, _ in parts])])
        text = torch.cat([torch.full((p.shape[0],), int(not soft)) for p, soft in parts])[None]
        positions = compressor.module.positions(mask, text)
        return compressor.llm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).logits[0, -1]


def test_release_folders_are_recognised_and_mapped(loaded):
    for kind, compressor in loaded.items():
        cfg = compressor.config
        assert compressor.name == "autocompressor" and cfg.model == str(FIXTURE / f"{kind}-tiny")
        assert (cfg.num_slots, cfg.accumulate, cfg.finetune) == (GOLDEN["summary_length"], True, "frozen")
        assert compressor.module.positions_counted == (kind == "opt")  # OPT: summaries take no position
        assert list(compressor.trainable_state_dict()) == ["summary_embeddings"]
    assert create_compressor(str(FIXTURE / "llama-tiny")).config.chunk_tokens == 1536


@pytest.mark.parametrize("kind", KINDS)
def test_summary_vectors_and_logits_match_the_official_code(loaded, kind):
    compressor, golden = loaded[kind], GOLDEN[kind]
    assert compressor.tokenizer(golden["context"], add_special_tokens=False)["input_ids"] == golden["context_ids"]
    soft = compressor.compress(golden["context"])
    segment = soft.items[0][0]
    assert segment.chunks == len(golden["segment_lengths"])
    assert (segment.embeddings - torch.tensor(golden["softprompt"])).abs().max() < TOLERANCE
    logits = next_token_logits(compressor, soft.items[0], golden["prompt"])
    assert (logits - torch.tensor(golden["next_token_logits"])).abs().max() < TOLERANCE
    answer = compressor.generate(soft, golden["prompt"], max_new_tokens=len(golden["generated_ids"]))
    assert answer == [golden["generated_text"]]
    first = compressor.compress(compressor.tokenizer.decode(golden["context_ids"][:24]))  # one segment
    assert (first.items[0][0].embeddings - torch.tensor(golden["one_segment_softprompt"])).abs().max() < TOLERANCE


def test_opt_positions_are_the_official_ones_not_sequential():
    sequential = create_compressor(str(FIXTURE / "opt-tiny"), chunk_tokens=24, summary_positions="sequential")
    soft = sequential.compress(GOLDEN["opt"]["context"]).items[0][0].embeddings
    assert (soft - torch.tensor(GOLDEN["opt"]["softprompt"])).abs().max() > 1e-3  # the option changes the result


@pytest.mark.parametrize("kind", KINDS)
def test_batched_compress_and_generate_equal_one_by_one(loaded, kind):
    compressor = loaded[kind]
    texts = [GOLDEN[kind]["context"], "Paris is the capital and most populous city of France."]
    batch = compressor.compress_batch([[t] for t in texts], question="Where was the game played?")
    alone = [compressor.compress([t], question="Where was the game played?") for t in texts]
    for row, single in zip(batch.items, alone):
        assert torch.allclose(row[0].embeddings, single.items[0][0].embeddings, atol=TOLERANCE)
    assert batch.compressed_tokens == [a.compressed_tokens[0] for a in alone]
    assert batch.ratio == pytest.approx(sum(batch.origin_tokens) / sum(batch.compressed_tokens))
    assert compressor.generate(batch, max_new_tokens=4) == [compressor.generate(a, max_new_tokens=4)[0] for a in alone]


@pytest.mark.parametrize("kind", KINDS)
def test_text_and_soft_segments_mix_in_one_prompt(loaded, kind):
    compressor = loaded[kind]
    prompt = Prompt((TextSegment("Background:", role=Role.INSTRUCTION),
                     TextSegment(GOLDEN[kind]["context"], role=Role.CONTEXT),
                     TextSegment(GOLDEN[kind]["prompt"], role=Role.QUESTION)))
    soft = compressor.compress(prompt)
    assert [type(p).__name__ for p in soft.items[0]] == ["TextSegment", "SoftSegment", "TextSegment"]
    parts = compressor.decoder_parts(soft.items[0], "qa", None)
    assert [s for _, s in parts] == [False, True, False]
    assert len(compressor.generate(soft, max_new_tokens=3)) == 1


def test_hard_then_soft_pipeline_on_the_release(loaded):
    compressor = loaded["llama"]
    pipe = Pipeline([{"compressor": "truncate", "model": str(FIXTURE / "llama-tiny"), "rate": 0.5}, compressor])
    result = pipe.compress([GOLDEN["llama"]["context"]], question="Where was the game played?")
    assert [s["method"] for s in result.extras["stages"]] == ["truncate", "autocompressor"]
    assert any(isinstance(p, SoftSegment) for p in result.items[0])
    assert result.items[0][-1].text == "Where was the game played?"
    assert len(pipe.generate(result, max_new_tokens=3)) == 1


def test_wrong_or_incomplete_releases_get_clear_errors(tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(FIXTURE / "llama-tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "summary_length": 0}))
    with pytest.raises(ConfigError, match="summary_length is 0"):
        create_compressor(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "summary_length": 7}))
    with pytest.raises(ConfigError, match=r"embed_summary.weight has shape \(4, 16\), expected \(7, 16\)"):
        create_compressor(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del weights["embed_summary.weight"]
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"no summary embeddings \(embed_summary.weight\)"):
        create_compressor(str(folder))
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable weights file"):
        create_compressor(str(folder))


def test_a_loaded_release_saves_and_reloads_as_an_mmcompress_compressor(loaded, tmp_path):
    loaded["opt"].save_pretrained(tmp_path / "saved")
    again = create_compressor(str(tmp_path / "saved"))
    assert (again.config.finetune, again.config.chunk_tokens, again.module.positions_counted) == ("frozen", 24, True)
    soft = again.compress(GOLDEN["opt"]["context"]).items[0][0].embeddings
    assert (soft - torch.tensor(GOLDEN["opt"]["softprompt"])).abs().max() < TOLERANCE
