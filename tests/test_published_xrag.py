"""xRAG releases (Hannibal046/xrag-7b layout) loaded by ``create_compressor(folder)`` and matched against the official
code's outputs.

``tests/fixtures/published/xrag`` holds a tiny random ``XMistralForCausalLM`` saved the way xRAG's train.py saves
xrag-7b, a tiny SFR retriever, and ``golden.json``: what Hannibal046/xRAG@121fa418 computes on them under transformers
4.38.0 (written by ``tests/published_reference/xrag.py``): the SFR document embeddings, their projection, and for
each prompt the token ids, the next-token logits and a greedy continuation.
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

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "xrag"
RELEASE, RETRIEVER = FIXTURE / "xrag-7b-tiny", FIXTURE / "sfr-tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def xrag():
    return create_compressor(str(RELEASE), retriever=str(RETRIEVER))


def last_logits(compressor, pieces) -> torch.Tensor:
    with torch.no_grad():
        embeds = compressor.decoder_embeddings(pieces, "qa", None)
        return compressor.llm(inputs_embeds=embeds[None]).logits[0, -1]


def test_release_folder_is_recognised_and_mapped_to_xrag(xrag):
    cfg = xrag.config
    assert xrag.name == "xrag" and cfg.model == str(RELEASE) and cfg.encoder == str(RETRIEVER)
    assert (cfg.pooling, cfg.normalize, cfg.chunk_tokens, cfg.max_chunks, cfg.num_slots) == ("last", False, 180, 1, 1)
    assert cfg.slot_token == "<xRAG>" and cfg.answer_instruction is None


def test_projection_matches_the_official_code(xrag):
    batch, counts = xrag.module.encoder_batch(GOLDEN["documents"])
    assert counts == [1, 1, 1]
    with torch.no_grad():
        embeddings = xrag.module.encoder(**batch)
        projected = xrag.module.project(batch)
    assert (embeddings - torch.tensor(GOLDEN["doc_embeddings"])).abs().max() < TOLERANCE
    assert (projected - torch.tensor(GOLDEN["projected"])).abs().max() < TOLERANCE
    soft = xrag.compress_batch([[d] for d in GOLDEN["documents"]])
    assert (soft.embeddings[:, 0] - torch.tensor(GOLDEN["projected"])).abs().max() < TOLERANCE


@pytest.mark.parametrize("index", range(len(GOLDEN["prompts"])))
def test_prompt_and_next_token_logits_match_the_official_code(xrag, index):
    case = GOLDEN["prompts"][index]
    docs = [GOLDEN["documents"][i] for i in case["documents"]]
    soft = xrag.compress(docs, question=case["question"])
    user, counts = xrag.user_message(soft.items[0], "qa", None)
    slot_id = xrag.tokenizer.convert_tokens_to_ids("<xRAG>")
    assert xrag.module.prompt_ids(user, counts) == [-1 if i == slot_id else i for i in case["input_ids"]]
    logits = last_logits(xrag, soft.items[0])
    assert (logits - torch.tensor(case["next_token_logits"])).abs().max() < TOLERANCE
    assert xrag.generate(soft, max_new_tokens=len(case["generated_ids"])) == [case["generated_text"]]


def test_batched_compress_and_generate_equal_one_by_one(xrag):
    prompts = [Prompt.from_documents([GOLDEN["documents"][i] for i in c["documents"]], question=c["question"])
               for c in GOLDEN["prompts"]]
    batch = xrag.compress_batch(prompts)
    alone = [xrag.compress(p) for p in prompts]
    assert batch.compressed_tokens == [a.compressed_tokens[0] for a in alone]
    assert batch.origin_tokens == [a.origin_tokens[0] for a in alone]
    assert xrag.generate(batch, max_new_tokens=5) == [xrag.generate(a, max_new_tokens=5)[0] for a in alone]
    # accounting (as for mmcompress's own xrag): one soft token per document plus the kept question with its separator
    question = GOLDEN["prompts"][1]["question"]
    kept = len(xrag.tokenizer(prompts[1].separator + question, add_special_tokens=False)["input_ids"])
    assert batch.compressed_tokens[1] == 2 + kept


def test_text_and_soft_documents_mix_in_one_prompt(xrag):
    kept_doc, soft_doc = GOLDEN["documents"][0], GOLDEN["documents"][2]
    prompt = Prompt((TextSegment(kept_doc, role=Role.CONTEXT, keep=True), TextSegment(soft_doc, role=Role.CONTEXT),
                     TextSegment("What is the capital of France?", role=Role.QUESTION)))
    soft = xrag.compress(prompt)
    pieces = soft.items[0]
    assert [type(p).__name__ for p in pieces] == ["TextSegment", "SoftSegment", "TextSegment"]
    user, counts = xrag.user_message(pieces, "qa", None)
    assert user.startswith(f"Refer to the background document: {kept_doc}\n\n") and counts == [1]
    ids = xrag.module.prompt_ids(user, counts)
    embeds = xrag.decoder_embeddings(pieces, "qa", None)
    slot = ids.index(-1)
    assert torch.allclose(embeds[slot], pieces[1].embeddings[0])  # the projection sits at the placeholder
    text_ids = [i for i in ids if i >= 0]
    assert torch.equal(embeds[[k for k, i in enumerate(ids) if i >= 0]],
                       xrag.llm.get_input_embeddings()(torch.tensor(text_ids)))
    assert len(xrag.generate(soft, max_new_tokens=3)) == 1


def test_hard_then_soft_pipeline_on_the_release(xrag):
    pipe = Pipeline([{"compressor": "truncate", "model": str(RELEASE), "rate": 0.5}, xrag])
    docs = GOLDEN["documents"][:2]
    result = pipe.compress(docs, question="Which team won the game?")
    assert [s["method"] for s in result.extras["stages"]] == ["truncate", "xrag"]
    soft_pieces = [p for p in result.items[0] if isinstance(p, SoftSegment)]
    assert soft_pieces and all(p.num_tokens == 1 for p in soft_pieces)  # what truncation left, one token a document
    assert result.ratio > xrag.compress(docs, question="Which team won the game?").ratio
    assert result.items[0][-1].text == "Which team won the game?"
    assert result.ratio == pytest.approx(result.origin_total / result.compressed_total)
    assert len(pipe.generate(result, max_new_tokens=3)) == 1


def _copy_release(tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    shutil.copytree(RELEASE, folder)
    return folder


def test_wrong_or_incomplete_releases_get_clear_errors(tmp_path):
    folder = _copy_release(tmp_path)
    with pytest.raises(ConfigError, match="hidden size 16, but this xRAG projector reads 12"):
        create_compressor(str(folder), retriever=str(folder))  # the LM itself is not the retriever
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "projector_type": "linear"}))
    with pytest.raises(ConfigError, match="projector_type 'linear'"):
        create_compressor(str(folder), retriever=str(RETRIEVER))
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("projector.projector.2")},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"missing \['projector.projector.2.bias'"):
        create_compressor(str(folder), retriever=str(RETRIEVER))
    save_file({k: v for k, v in weights.items() if not k.startswith("projector")}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="no xRAG projector"):
        create_compressor(str(folder), retriever=str(RETRIEVER))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="has no model weights"):
        create_compressor(str(folder), retriever=str(RETRIEVER))


def test_a_tokenizer_without_the_placeholder_is_refused(tmp_path):
    folder = _copy_release(tmp_path)
    shutil.copy(RETRIEVER / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy(RETRIEVER / "tokenizer_config.json", folder / "tokenizer_config.json")
    shutil.copy(RETRIEVER / "special_tokens_map.json", folder / "special_tokens_map.json")
    with pytest.raises(ConfigError, match="no <xRAG> token"):
        create_compressor(str(folder), retriever=str(RETRIEVER))


def test_a_loaded_release_saves_and_reloads_as_an_mmcompress_compressor(xrag, tmp_path):
    xrag.save_pretrained(tmp_path / "saved")
    again = create_compressor(str(tmp_path / "saved"))
    assert again.config.slot_token == "<xRAG>" and again.config.encoder == str(RETRIEVER)
    case = GOLDEN["prompts"][0]
    soft = again.compress([GOLDEN["documents"][0]], question=case["question"])
    assert (last_logits(again, soft.items[0]) - torch.tensor(case["next_token_logits"])).abs().max() < TOLERANCE
