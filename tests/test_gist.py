"""GIST tokens on the tiny Llama: the mask, the cached gists (logits equal the masked full pass, at any batch size
and position), training under the mask, save/load and batched generation."""
from __future__ import annotations

import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.models.decoding import cache_kwargs, left_pad
from mmcompress.soft.gist import AFTER, GIST, PAD, PROMPT, GistCompressor, collate_rows, gist_mask, gist_row

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Paris is the capital and most populous city of France. Berlin is the capital of Germany."]


@pytest.fixture
def gist(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    compressor = GistCompressor(model=model, tokenizer=tokenizer, num_slots=3, chunk_tokens=64, tied_gists=False)
    with torch.no_grad():  # a trained gist is not the mean embedding; make the gists distinct
        compressor.module.gist_embeddings.normal_(std=0.5)
        for name, p in compressor.module.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # an adapter that changes the model, so "LoRA on" is visible
    yield compressor
    compressor.module.llm.unload()  # take the adapter out of the shared tiny model


def test_gist_mask_matches_the_reference_example():
    # reference docstring: for "a b c G d", row d is 0 0 0 1 1
    segments = torch.tensor([[PROMPT, PROMPT, PROMPT, GIST, AFTER]])
    mask = gist_mask(segments)[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(mask, expected)


def test_gist_mask_with_padding_and_several_gists():
    segments = torch.tensor([[PROMPT, PROMPT, GIST, GIST, AFTER, AFTER, PAD]])
    mask = gist_mask(segments)[0, 0]
    assert not mask[4:6, :2].any()  # after the gists: no prompt
    assert mask[4:6, 2:4].all()  # ... but every gist
    assert mask[2:4, :2].all() and mask[3, 2]  # gists read the prompt and earlier gists
    assert not mask[:, 6][:6].any() and mask[6, 6]  # padding is never a key (except to itself)


def _continuation_logits_full(gist, text_ids, after_ids):
    row = collate_rows([gist_row(text_ids, after_ids, gist.module.num_gists)])
    with torch.no_grad():
        logits = gist.module(row["input_ids"], row["segments"]).logits
    return logits[0, len(text_ids) + gist.module.num_gists:]


def test_cached_gists_give_the_masked_full_forward_logits(gist):
    tok = gist.tokenizer
    after = tok(" What is it? It is", add_special_tokens=False)["input_ids"]
    soft = gist.compress_batch(TEXTS)  # one left-padded batch of two texts of different lengths
    for b, text in enumerate(TEXTS):
        reference = _continuation_logits_full(gist, tok(text, add_special_tokens=False)["input_ids"], after)
        layers, position, _ = gist._row_cache(soft.items[b])
        assert position == 3 and layers[0][0].shape[-2] == 3  # only the gists are cached
        from mmcompress.soft.gist import stack_row_caches

        context = stack_row_caches(gist.decoder, [(layers, position)])
        ids, mask = left_pad([after], 0)
        with torch.no_grad():
            out = gist.decoder(input_ids=ids, attention_mask=torch.cat([context.cache_mask, mask], 1),
                               position_ids=position + torch.arange(len(after))[None],
                               **cache_kwargs(gist.decoder, context.cache))
        torch.testing.assert_close(out.logits[0], reference, atol=1e-4, rtol=1e-4)


def test_gists_hold_everything_the_continuation_sees(gist):
    """Changing the prompt changes the continuation only through the gists: same gist KV, same logits."""
    tok = gist.tokenizer
    after = tok(" and then", add_special_tokens=False)["input_ids"]
    a = _continuation_logits_full(gist, tok(TEXTS[0], add_special_tokens=False)["input_ids"], after)
    b = _continuation_logits_full(gist, tok(TEXTS[1], add_special_tokens=False)["input_ids"], after)
    assert not torch.allclose(a, b, atol=1e-3)
    row = collate_rows([gist_row(tok(TEXTS[0], add_special_tokens=False)["input_ids"], after, 3)])
    row["segments"][0, :3] = PAD  # hiding part of the prompt from the gists changes the continuation too
    with torch.no_grad():
        hidden = gist.module(row["input_ids"], row["segments"]).logits[0, -len(after):]
    assert not torch.allclose(a, hidden, atol=1e-3)


def test_batched_generate_equals_row_by_row_with_kept_text(gist):
    prompts = [{"instruction": "Answer briefly.", "documents": [TEXTS[0]]}, {"documents": [TEXTS[1]]}]
    from mmcompress.prompt import Prompt

    coerced = [Prompt.coerce(p["documents"], instruction=p.get("instruction")) for p in prompts]
    soft = gist.compress_batch(coerced)
    questions = ["Who jumps?", "What is the capital of France?"]
    together = gist.generate(soft, questions, max_new_tokens=6)
    alone = [gist.generate(soft[i], questions[i], max_new_tokens=6)[0] for i in range(2)]
    assert together == alone
    assert soft.compressed_tokens[1] < soft.origin_tokens[1]


def test_long_text_is_chunked_and_chunks_follow_each_other(gist):
    long_text = " ".join(TEXTS * 6)
    n_tokens = len(gist.tokenizer(long_text, add_special_tokens=False)["input_ids"])
    segment = gist.compress(long_text).items[0][0]
    assert segment.chunks == -(-n_tokens // 64)
    assert segment.num_tokens == 3 * segment.chunks


def test_training_under_the_mask_updates_only_adapter_and_gists(gist):
    module = gist.module
    tok = gist.tokenizer
    rows = [gist_row(tok(t, add_special_tokens=False)["input_ids"], tok(" It is true.", add_special_tokens=False)["input_ids"], 3)
            for t in TEXTS]
    batch = collate_rows(rows)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "gist_embeddings" in trainable and all("lora_" in n or n == "gist_embeddings" for n in trainable)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-2)
    module.train()
    losses = []
    for _ in range(10):
        loss = module.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert module.gist_embeddings.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    module.eval()
    assert losses[-1] < losses[0] - 0.2  # it learns under the mask


def test_save_and_load_roundtrip(gist, tmp_path, tiny_dir):
    soft = gist.compress(TEXTS[0])
    gist.save_pretrained(tmp_path / "g")
    from mmcompress.factory import create_compressor

    loaded = create_compressor(str(tmp_path / "g"), model=str(tiny_dir), device="cpu", dtype="float32")
    assert isinstance(loaded, GistCompressor)
    again = loaded.compress(TEXTS[0])
    for (k1, v1), (k2, v2) in zip(soft.items[0][0].kv, again.items[0][0].kv):
        torch.testing.assert_close(k1, k2)
        torch.testing.assert_close(v1, v2)


def test_bad_settings_are_refused(tiny_gpt2):
    with pytest.raises(ConfigError, match="finetune"):
        GistCompressor(finetune="partial")
    model, tokenizer = tiny_gpt2
    with pytest.raises(ConfigError, match="RoPE"):
        GistCompressor(model=model, tokenizer=tokenizer).module  # noqa: B018


def test_recipe_trains_saves_and_loads(tiny_dir, tmp_path):
    from mmcompress.factory import create_compressor
    from mmcompress.training.tasks import load_recipe, run_recipe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(TEXTS * 3) for _ in range(4)))
    recipe = load_recipe("configs/train/gist.yaml", {
        "model.model": str(tiny_dir), "model.num_slots": 2, "model.chunk_tokens": 32, "data.corpus": str(corpus),
        "data.examples": 8, "data.eval_examples": 2, "data.min_text_tokens": 8, "data.max_text_tokens": 32,
        "data.continuation_tokens": 8, "train.max_steps": 2, "train.batch_size": 2, "train.eval_every": 0,
        "train.save_every": 0, "train.progress": False, "train.output_dir": str(tmp_path / "run")})
    result = run_recipe(recipe)
    assert result.steps == 2
    loaded = create_compressor(str(tmp_path / "run" / "final"), device="cpu", dtype="float32")
    assert isinstance(loaded, GistCompressor) and loaded.config.num_slots == 2
    assert loaded.compress(TEXTS[0]).items[0][0].num_tokens == 2


def test_gist_is_a_system_of_the_evaluation_harness(gist, tiny_lm):
    from mmcompress.evaluation.harness import QAExample, evaluate
    from mmcompress.evaluation.reader import Reader

    model, tokenizer = tiny_lm
    reader = Reader(model=model, tokenizer=tokenizer, max_new_tokens=3)
    examples = [QAExample("a", "Who jumps?", ["fox"], [TEXTS[0], TEXTS[1]]),
                QAExample("b", "What is the capital of France?", ["Paris"], [TEXTS[1]])]
    system = gist.qa_system(reader)
    report = evaluate(examples, [system], [0.25], reader)
    result = report.results[0]
    assert result.system == "gist" and gist.config.chunk_tokens == 12  # num_slots / rate
    assert result.rate < 0.6  # documents became 3 gists per 12 tokens; instruction and question stay text
    outputs = system.run(examples, 0.25)
    assert [o.answer for o in outputs] == [o.answer for o in system.run(examples[::-1], 0.25)][::-1]  # batch-invariant


@pytest.mark.slow
def test_real_model_gist_cache_equals_masked_forward(smollm2):
    gist = GistCompressor(model=smollm2.model, tokenizer=smollm2.tokenizer, num_slots=4, chunk_tokens=64)
    try:
        tok = gist.tokenizer
        after = tok(" The capital is", add_special_tokens=False)["input_ids"]
        text_ids = tok(TEXTS[1], add_special_tokens=False)["input_ids"]
        reference = _continuation_logits_full(gist, text_ids, after)
        layers, position, _ = gist._row_cache(gist.compress(TEXTS[1]).items[0])
        from mmcompress.soft.gist import stack_row_caches

        context = stack_row_caches(gist.decoder, [(layers, position)])
        with torch.no_grad():
            out = gist.decoder(input_ids=torch.tensor([after]), attention_mask=torch.ones(1, 4 + len(after), dtype=torch.long),
                               position_ids=4 + torch.arange(len(after))[None], **cache_kwargs(gist.decoder, context.cache))
        torch.testing.assert_close(out.logits[0], reference, atol=2e-3, rtol=1e-3)
    finally:
        gist.module.llm.unload()
