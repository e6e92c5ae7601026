"""The trained soft compressors shipped in the package (``soft-smollm2-4x``, ``-2x``, ``-4x-qa``; real SmolLM2-135M,
slow tier): they load by name offline, carry their held-out windows (matched soft prompt far better than another
window's, near the card's number), answer SQuAD questions from a question-focused soft context (``-4x-qa``), answer
through the CLI, and chain after a hard stage."""
from __future__ import annotations

import json

import pytest
import torch

from mmcompress import Pipeline, create_compressor
from mmcompress.factory import list_trained, trained_card
from mmcompress.soft.losses import collate
from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

pytestmark = pytest.mark.slow
NAME = "soft-smollm2-4x"
SHIPPED = {"soft-smollm2-4x": 4, "soft-smollm2-2x": 2, "soft-smollm2-4x-qa": 4}


def load_shipped(name):
    if name not in list_trained():
        pytest.fail(f"{name} is not shipped in mmcompress/trained/")
    return create_compressor(name, device="cpu")


@pytest.fixture(scope="module")
def shipped():
    return load_shipped(NAME)


def test_card_and_listing(shipped, capsys):
    from mmcompress.cli import main

    card = trained_card(NAME)
    assert card["method"] == shipped.name == "meanpool" and card["ratio"] == 4
    assert main(["list", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["trained"]}
    assert listed[NAME]["ratio"] == 4 and "tf_token_accuracy" in listed[NAME]["heldout"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_stay_within_the_10_mb_aim(name):
    """Only what was trained ships, in bfloat16, and small (issue 18's aim: <= 10 MB per compressor)."""
    from safetensors import safe_open

    from mmcompress.soft.base import WEIGHTS_FILE

    file = list_trained()[name] / WEIGHTS_FILE
    with safe_open(str(file), "pt") as weights:
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"BF16"}
    assert file.stat().st_size <= 10_000_000, f"{file} is {file.stat().st_size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_carry_held_out_windows(name):
    """Teacher-forced on 16 held-out windows (the corpus tail the recipe never trains on): each window's own soft
    prompt must give far higher token accuracy than another window's, and above the card's number less a margin."""
    from conftest import shared_file

    shipped = load_shipped(name)
    assert shipped.config.pool_ratio == SHIPPED[name] == trained_card(name)["ratio"]
    tok = shipped.tokenizer
    window = shipped.config.chunk_tokens
    data = {**DATA_DEFAULTS, "text": str(shared_file("corpus_wiki_news.txt")), "context_tokens": window,
            "eval_examples": 16}
    _, held = build_datasets(data, tok, tok.eos_token_id)
    batch = collate([held[i] for i in range(16)], window, tok.pad_token_id)
    rolled = {**batch, "chunk_ids": batch["chunk_ids"].roll(1, 0), "chunk_mask": batch["chunk_mask"].roll(1, 0)}
    module = shipped.module.eval()
    with torch.no_grad():
        matched = module.evaluation_step(batch)["token_accuracy"]
        mismatched = module.evaluation_step(rolled)["token_accuracy"]
    card = trained_card(name)["heldout"]
    assert matched >= card["tf_token_accuracy"] - 0.1
    assert matched >= mismatched + 0.2


def test_the_shipped_qa_model_answers_from_its_question_focused_soft_context():
    """``soft-smollm2-4x-qa`` on the 52 validation rows of the held-out SQuAD tail (never trained on; the card's
    numbers are on the test rows): its question-focused 4x soft context contains the gold answer in more rows than
    no context and than the same weights pooled uniformly (validation when chosen: 12, 1 and 4 of 52 rows)."""
    from conftest import shared_file

    from mmcompress.evaluation.soft_qa import evaluate_soft_qa
    from mmcompress.soft.losses import read_jsonl
    from mmcompress.soft.tasks import held_out_part, qa_cut

    qa = load_shipped("soft-smollm2-4x-qa")
    assert qa.config.question_focus > 0 and qa.config.decoder_lora_r > 0
    rows = read_jsonl(shared_file("squad_dev.jsonl"))
    rows = held_out_part(rows[qa_cut(rows, 0.1):], "validation")
    focused = evaluate_soft_qa(qa, rows).contains_per_row
    none = evaluate_soft_qa(qa, rows, setting="no_context").contains_per_row
    qa.config.question_focus = 0.0  # the same weights, uniform pooling
    uniform = evaluate_soft_qa(qa, rows).contains_per_row
    print(f"contains: focused {sum(focused)}, uniform {sum(uniform)}, no context {sum(none)} of {len(rows)}")
    assert len(rows) == 52
    assert sum(focused) >= 8 and sum(focused) >= sum(none) + 5 and sum(focused) >= sum(uniform) + 4


def test_a_text_of_several_chunks_comes_back_chunk_by_chunk(shipped):
    """A held-out text of 4 chunks: ``reconstruct`` decodes each chunk alone, as the autoencoder was trained, and
    the text comes back near the one-window BLEU; the decoder reading all 4 chunks at once does not get it back
    (benchmarks/soft_long_reconstruction.py measures both on more spans)."""
    from conftest import shared_file

    from mmcompress.evaluation.metrics import bleu4
    from mmcompress.soft.tasks import documents, held_out_part, split_documents, windows

    tok = shipped.tokenizer
    _, held = split_documents(documents(str(shared_file("corpus_wiki_news.txt"))), 0.05)
    span = windows(held_out_part(held, "validation"), tok, 4 * shipped.config.chunk_tokens)[0]
    text = tok.decode(span)
    soft = shipped.compress(text)
    assert soft.items[0][0].chunks == 4 and soft.soft_tokens == [len(span) // 4]
    each = bleu4([shipped.reconstruct(soft)[0].strip()], [text.strip()])
    whole = bleu4([shipped.reconstruct(soft, per_chunk=False, max_new_tokens=len(span) + 8)[0].strip()], [text.strip()])
    print(f"BLEU-4 each chunk alone {each:.3f}, whole span {whole:.3f}")
    assert each >= 0.5 and each >= whole + 0.3


def test_cli_and_hard_then_soft_pipeline(shipped, capsys):
    from mmcompress.cli import main

    doc = open("examples/data/telescope.txt").read()[:1500]
    assert main(["compress", "--method", NAME, doc, "--question", "Who built the telescope?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "meanpool" and isinstance(out["answer"], str)
    pipe = Pipeline([{"compressor": "truncate", "rate": 0.5}, NAME])
    soft = pipe.compress(doc, question="Who built the telescope?")
    assert soft.ratio > 4.0  # 2x hard then 4x soft on the documents; the question is kept
    assert len(pipe.generate(soft)) == 1


def test_interleaved_meanpool_model_starts_from_the_shipped_text_compressor(shipped):
    """The shipped interleaved recipe's start (init_text_compressor: soft-smollm2-4x, style meanpool): on a text-only
    prompt of 4K tokens pooled to K groups, the interleaved encoder gives the text compressor's own soft prompt, and
    its decoder (the text compressor's decoder adapter) regenerates the text from it the same way."""
    from mmcompress.multimodal.interleaved import InterleavedCompressor
    from mmcompress.training.tasks import load_recipe

    fields = {k: v for k, v in load_recipe("configs/train/interleaved-shapes-meanpool.yaml")["model"].items()
              if k not in ("decoder_lora", "device", "dtype")}
    text = create_compressor(NAME, device="cpu", dtype="float32")
    comp = InterleavedCompressor(**fields, device="cpu", dtype="float32")
    comp.load_text_compressor(NAME)
    comp.module.eval()
    tok = text.tokenizer
    ids = tok("The Eiffel Tower was completed in 1889 as the entrance arch of the World's Fair held in Paris, and it "
              "remained the tallest structure in the world until 1930.", add_special_tokens=False)["input_ids"][:32]
    sentence = tok.decode(ids)
    assert tok(sentence, add_special_tokens=False)["input_ids"] == ids
    ref = text.compress(sentence)
    got = comp.set_slots(8).compress(sentence)
    assert ref.soft_tokens == got.soft_tokens == [8]
    for (k1, v1), (k2, v2) in zip(ref.items[0][0].kv, got.items[0][0].kv):
        assert torch.allclose(k1, k2, atol=1e-3) and torch.allclose(v1, v2, atol=1e-3)
    regenerated = comp.generate(got, task="ae", max_new_tokens=40)[0]
    assert regenerated == text.reconstruct(ref, max_new_tokens=40)[0]
    words = [w.strip(".,'").lower() for w in sentence.split()]
    found = {w.strip(".,'").lower() for w in regenerated.split()}
    assert sum(w in found for w in words) >= 0.8 * len(words)  # the shipped weights carry the window
