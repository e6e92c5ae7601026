"""Attention-side baselines: presses keep exact budgets, keep the right entries, and decoding after a press uses the
original positions (checked against a full forward pass under the equivalent attention mask)."""
from __future__ import annotations

import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.kvcache import (
    KnormPress,
    SlidingWindowPress,
    SnapKVPress,
    StreamingLLMPress,
    create_press,
    generate_from_cache,
    list_presses,
    prefill,
)
from mmcompress.models.compat import cache_kwargs, new_cache

ALL_PRESSES = [KnormPress(rate=0.25), SnapKVPress(rate=0.25, window_size=8), StreamingLLMPress(rate=0.25, n_sink=2),
               SlidingWindowPress(rate=0.25)]


def _ids(batch=2, length=40, seed=0):
    return torch.randint(5, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("press", ALL_PRESSES, ids=lambda p: p.name)
def test_press_keeps_exact_count_in_every_layer(tiny_lm, press):
    model, _ = tiny_lm
    context = prefill(model, _ids(), press)
    assert [layer.keys.shape[-2] for layer in context.cache.layers] == [10] * model.config.num_hidden_layers
    assert [layer.values.shape[-2] for layer in context.cache.layers] == [10] * model.config.num_hidden_layers
    assert context.next_position.tolist() == [40, 40]  # decoding resumes after the original context
    assert context.kv_bytes() < prefill(model, _ids()).kv_bytes() / 3


def test_target_entries_overrides_rate(tiny_lm):
    model, _ = tiny_lm
    context = prefill(model, _ids(length=33), KnormPress(rate=0.9, target_entries=7))
    assert context.cache_entries == 7


def _full_keys(model, ids):
    cache = new_cache(model)
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    return [layer.keys for layer in cache.layers]


def test_knorm_keeps_the_lowest_norm_keys(tiny_lm):
    model, _ = tiny_lm
    ids = _ids()
    full = _full_keys(model, ids)
    pressed = prefill(model, ids, KnormPress(rate=0.25)).cache
    for keys, layer in zip(full, pressed.layers):
        wanted = (-keys.norm(dim=-1)).topk(10, dim=-1).indices.sort(dim=-1).values
        expected = keys.gather(2, wanted[..., None].expand(-1, -1, -1, keys.shape[-1]))
        torch.testing.assert_close(layer.keys, expected)


def test_streaming_keeps_sinks_and_recent_entries(tiny_lm):
    model, _ = tiny_lm
    ids = _ids()
    full = _full_keys(model, ids)
    pressed = prefill(model, ids, StreamingLLMPress(rate=0.25, n_sink=3)).cache
    for keys, layer in zip(full, pressed.layers):
        torch.testing.assert_close(layer.keys, torch.cat([keys[..., :3, :], keys[..., -7:, :]], dim=-2))


def test_snapkv_always_keeps_the_observation_window(tiny_lm):
    model, _ = tiny_lm
    ids = _ids()
    full = _full_keys(model, ids)
    pressed = prefill(model, ids, SnapKVPress(rate=0.25, window_size=6)).cache
    for keys, layer in zip(full, pressed.layers):
        torch.testing.assert_close(layer.keys[..., -6:, :], keys[..., -6:, :])
        assert not torch.equal(layer.keys[..., :4, :], keys[..., :4, :])  # the rest is a selection, not the prefix


@pytest.mark.parametrize("n_sink", [0, 3])
def test_decoding_after_eviction_equals_masked_full_forward(tiny_lm, n_sink):
    """After a head-uniform eviction, the suffix's logits equal a full pass where the suffix cannot see evicted
    tokens (the context tokens themselves saw everything when they were read). Wrong positions would break this."""
    model, _ = tiny_lm
    ids = _ids(batch=1, length=30)
    suffix = [[11, 12, 13, 14]]
    press = StreamingLLMPress(rate=0.3, n_sink=n_sink)
    context = prefill(model, ids, press)
    kept = torch.zeros(30, dtype=torch.bool)
    kept[:n_sink] = True
    kept[30 - (9 - n_sink):] = True
    full = torch.cat([ids, torch.tensor(suffix)], dim=1)
    total = full.shape[1]
    allowed = torch.ones(total, total, dtype=torch.bool).tril()
    allowed[30:, :30] &= kept
    mask = torch.zeros(1, 1, total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        reference = model(input_ids=full, attention_mask=mask, position_ids=torch.arange(total)[None]).logits[0, 30:]
        from mmcompress.models.decoding import left_pad

        sfx, sfx_mask = left_pad(suffix, 0)
        out = model(input_ids=sfx, attention_mask=torch.cat([context.cache_mask, sfx_mask], 1),
                    position_ids=torch.arange(30, 34)[None], **cache_kwargs(model, context.cache))
    torch.testing.assert_close(out.logits[0], reference, atol=1e-4, rtol=1e-4)


def test_batched_generation_after_full_prefill_matches_hf_generate(tiny_lm):
    model, _ = tiny_lm
    ids = _ids(batch=2, length=20)
    suffixes = [[7, 8, 9], [10, 11]]  # different lengths: left-padded inside
    context = prefill(model, ids)
    generation = generate_from_cache(model, context, suffixes, max_new_tokens=6)
    for row, suffix in enumerate(suffixes):
        full = torch.cat([ids[row], torch.tensor(suffix)])[None]
        ref = model.generate(full, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert generation.token_ids[row] == ref[0, full.shape[1]:].tolist()
    assert context.cache_entries == 20  # restored for the next question


def test_generation_after_press_matches_row_by_row(tiny_lm):
    model, _ = tiny_lm
    ids = _ids(batch=2, length=24)
    suffixes = [[7, 8, 9], [10, 11]]
    together = generate_from_cache(model, prefill(model, ids, SnapKVPress(rate=0.5, window_size=4)), suffixes,
                                   max_new_tokens=5).token_ids
    alone = [generate_from_cache(model, prefill(model, ids[i:i + 1], SnapKVPress(rate=0.5, window_size=4)), [s],
                                 max_new_tokens=5).token_ids[0] for i, s in enumerate(suffixes)]
    assert together == alone


def test_hooks_are_removed_even_on_error(tiny_lm):
    model, _ = tiny_lm
    attention = model.model.layers[0].self_attn
    with pytest.raises(RuntimeError, match="boom"):
        with KnormPress(rate=0.5)(model):
            assert len(attention._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(attention._forward_hooks) == 0
    context = prefill(model, _ids(batch=1, length=12))
    assert context.cache_entries == 12  # no press left behind


def test_padded_prefill_is_refused(tiny_lm):
    model, _ = tiny_lm
    ids = _ids(batch=2, length=10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with pytest.raises(ConfigError, match="unpadded"):
        with KnormPress(rate=0.5)(model):
            model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, new_cache(model)))


def test_registry_and_bad_settings():
    assert {"knorm", "snapkv", "streaming_llm", "sliding_window"} <= set(list_presses())
    assert isinstance(create_press("snapkv", rate=0.1, window_size=4), SnapKVPress)
    with pytest.raises(ConfigError, match="window_size"):
        create_press("knorm", window_size=4)
    with pytest.raises(ConfigError, match="rate"):
        KnormPress(rate=0.0)


def test_presses_are_systems_of_the_evaluation_harness(tiny_lm):
    from mmcompress.evaluation.harness import QAExample, evaluate
    from mmcompress.evaluation.systems import build_system
    from mmcompress.evaluation.reader import Reader
    from mmcompress.evaluation.kvcache_systems import split_prompt

    model, tokenizer = tiny_lm
    reader = Reader(model=model, tokenizer=tokenizer, max_new_tokens=4)
    examples = [QAExample("a", "What is the capital of France?", ["Paris"],
                          ["Paris is the capital and most populous city of France.", "Berlin is the capital of Germany."])]
    context_ids, question_ids = split_prompt(reader, examples[0], "Answer the question using the documents.")
    system = build_system("snapkv", reader, window_size=4)
    out = system.run(examples, 0.5)[0]
    assert out.extras["kv_entries"] == round(len(context_ids) * 0.5)
    assert out.compressed_tokens == out.extras["kv_entries"] + len(question_ids)
    # keeping everything answers exactly like the reader on the whole prompt read in one pass
    kept_all = build_system("knorm", reader).run(examples, 1.0)[0].answer
    whole = reader.generate(input_ids=torch.tensor([context_ids + question_ids]))[0]
    assert kept_all == whole
    report = evaluate(examples, [build_system("streaming_llm", reader)], [0.5], reader)
    assert report.results[0].system == "streaming_llm" and 0.4 < report.results[0].rate < 0.8


@pytest.mark.slow
def test_real_model_answers_after_a_snapkv_press(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    context = tokenizer("Paris is the capital and most populous city of France. " * 8, return_tensors="pt").input_ids
    pressed = prefill(model, context, SnapKVPress(rate=0.25, window_size=16))
    assert pressed.cache_entries == round(0.25 * context.shape[1])
    question = tokenizer(" The capital of France is", add_special_tokens=False).input_ids
    answer = generate_from_cache(model, pressed, [question], max_new_tokens=3)
    assert "Paris" in tokenizer.decode(answer.token_ids[0])
