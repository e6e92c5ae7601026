"""AutoCompressor on the tiny Llama (window 128): summary accumulation, truncated BPTT, documents longer than the
window, batched compression equal to one-by-one, recipe/save/load and generation."""
from __future__ import annotations

import random

import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.soft.autocompressor import AutoCompressor, random_segment_lengths

TEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football League for "
        "the 2015 season. The American Football Conference champion Denver Broncos defeated the National Football "
        "Conference champion Carolina Panthers to earn their third Super Bowl title. ")


@pytest.fixture
def auto(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    compressor = AutoCompressor(model=model, tokenizer=tokenizer, num_slots=3, chunk_tokens=24, bptt_segments=2)
    with torch.no_grad():
        compressor.module.summary_embeddings.normal_(std=0.5)
    yield compressor
    compressor.module.llm.unload()


def test_summaries_accumulate_over_segments(auto):
    n_tokens = len(auto.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    segment = auto.compress(TEXT).items[0][0]
    assert segment.chunks == -(-n_tokens // 24)
    assert segment.num_tokens == 3 * segment.chunks  # K summaries per segment, all kept


def test_each_summary_depends_on_earlier_segments_only(auto):
    tok = auto.tokenizer
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:72]
    changed = list(ids)
    changed[30] = (changed[30] + 1) % len(tok)  # a token of the second segment (24..47)
    a = auto.encode_spans([tok.decode(ids)])[0].embeddings
    b = auto.encode_spans([tok.decode(changed)])[0].embeddings
    if a.shape != b.shape:
        pytest.skip("decode/encode round trip changed the tokenization")
    assert torch.equal(a[:3], b[:3])  # first segment's summaries do not see the change
    assert (a[3:6] - b[3:6]).abs().max() > 1e-3  # the second segment's do
    assert (a[6:9] - b[6:9]).abs().max() > 1e-6  # and the third reads it through the accumulated summaries


def test_max_summary_segments_bounds_the_soft_prompt_for_long_documents(auto, tiny_lm):
    model, tokenizer = tiny_lm
    capped = AutoCompressor(model=model, tokenizer=tokenizer, num_slots=3, chunk_tokens=24, max_summary_segments=2)
    capped.module.load_state_dict(auto.module.state_dict())
    long_text = TEXT * 8  # far longer than the tiny model's 128-token window
    assert len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) > 3 * 128
    segment = capped.compress(long_text).items[0][0]
    assert segment.num_tokens == 6 and torch.isfinite(segment.embeddings).all()
    capped.module.llm.unload()


def test_batched_compression_equals_one_by_one(auto):
    texts = [TEXT, TEXT[:90], TEXT * 2]
    together = auto.encode_spans(texts)
    for text, seg in zip(texts, together):
        alone = auto.encode_spans([text])[0]
        torch.testing.assert_close(seg.embeddings, alone.embeddings, atol=1e-5, rtol=1e-4)


def _grad_of_segment_loss(auto, bptt, target_segment):
    auto.module.config.bptt_segments = bptt
    ids = torch.tensor([auto.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:40]])
    embed = auto.llm.get_input_embeddings()
    captured = {}

    def keep(module, args, output):  # the embedding table is frozen: make its output a leaf to read gradients
        leaf = output.detach().requires_grad_()
        captured["embeds"] = leaf
        return leaf

    handle = embed.register_forward_hook(keep)
    try:
        losses, _ = auto.module.segment_losses(ids, [10, 10, 10, 10])
        losses[target_segment].backward()
    finally:
        handle.remove()
    grad = captured["embeds"].grad[0].abs().sum(-1)
    return [float(grad[i:i + 10].sum()) for i in range(0, 40, 10)]


def test_truncated_bptt_stops_gradients_at_window_boundaries(auto):
    auto.module.train()
    windowed = _grad_of_segment_loss(auto, bptt=2, target_segment=3)
    assert windowed[0] == 0 and windowed[1] == 0  # segments 0-1 are another window
    assert windowed[2] > 0 and windowed[3] > 0  # segment 2's summaries feed segment 3
    full = _grad_of_segment_loss(auto, bptt=4, target_segment=3)
    assert all(g > 0 for g in full)  # one window: the loss reaches back through every summary
    assert auto.module.summary_embeddings.grad is not None and auto.module.summary_embeddings.grad.abs().sum() > 0
    auto.module.eval()


def test_random_segment_lengths():
    rng = random.Random(0)
    draws = [random_segment_lengths(100, 4, rng, minimum=5) for _ in range(50)]
    assert all(sum(d) == 100 and len(d) == 4 and min(d) >= 5 for d in draws)
    assert len({tuple(d) for d in draws}) > 40
    with pytest.raises(ConfigError):
        random_segment_lengths(10, 4, rng, minimum=5)


def test_generate_batches_with_questions(auto):
    soft = auto.compress_batch([TEXT, TEXT[:80]], question=None)
    questions = ["Who won?", "Which season?"]
    together = auto.generate(soft, questions, max_new_tokens=5)
    alone = [auto.generate(soft[i], questions[i], max_new_tokens=5)[0] for i in range(2)]
    assert together == alone


def test_recipe_trains_saves_and_loads(tiny_dir, tmp_path):
    from mmcompress.factory import create_compressor
    from mmcompress.training.tasks import load_recipe, run_recipe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join([TEXT * 2] * 4))
    recipe = load_recipe("configs/train/autocompressor.yaml", {
        "model.model": str(tiny_dir), "model.num_slots": 2, "model.chunk_tokens": 24, "data.corpus": str(corpus),
        "data.sequence_tokens": 48, "data.segments": 3, "data.min_segment_tokens": 4, "data.examples": 4, "data.eval_examples": 2,
        "train.max_steps": 2, "train.batch_size": 2, "train.eval_every": 0, "train.save_every": 0,
        "train.progress": False, "train.output_dir": str(tmp_path / "run")})
    assert run_recipe(recipe).steps == 2
    loaded = create_compressor(str(tmp_path / "run" / "final"), device="cpu", dtype="float32")
    assert isinstance(loaded, AutoCompressor)
    assert loaded.compress(TEXT).items[0][0].num_tokens % 2 == 0
