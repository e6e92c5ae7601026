"""Mean-pooling soft compression on tiny random Llamas: the pooling itself, grouped positions, the cache contract,
gradients, save/load and a learning test."""
from __future__ import annotations

import pytest
import torch

from mmcompress import create_compressor
from mmcompress.errors import ConfigError
from mmcompress.models.compat import cache_kwargs, new_cache, output_cache
from mmcompress.soft.losses import Example, collate
from mmcompress.soft.meanpool import MeanPoolCompressor, pooling_matrix
from tiny_models import perturb

DOC = "Super Bowl 50 was an American football game to determine the champion of the National Football League."
DOC2 = "Paris is the capital and most populous city of France."

pytestmark = pytest.mark.usefixtures("one_thread")


def build(tiny_dir, **kw):
    fields = {"pool_ratio": 4, "chunk_tokens": 16, "lora_r": 4, "max_new_tokens": 6, "device": "cpu",
              "dtype": "float32"}
    fields.update(kw)
    return MeanPoolCompressor(model=str(tiny_dir), **fields)


def test_pooling_matrix_averages_groups_of_real_tokens_from_the_first_one():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pool, groups = pooling_matrix(mask, 4)
    assert groups.tolist() == [2, 3]
    x = torch.arange(9, dtype=torch.float)[None, :, None].expand(2, 9, 1)
    pooled = torch.einsum("ngw,nwd->ngd", pool, x)[..., 0]
    # row 0: real tokens at 2..8 -> groups (2,3,4,5) and (6,7,8); row 1: (0..3), (4..7), (8)
    assert pooled[0, :2].tolist() == [3.5, 7.0] and pooled[0, 2] == 0
    assert pooled[1].tolist() == [1.5, 5.5, 8.0]


def test_config_derives_the_ratio_and_refuses_bad_values():
    c = create_compressor("meanpool", pool_ratio=4, chunk_tokens=128, model="x")
    assert c.config.num_slots == 32 and c.config.nominal_ratio == 4
    with pytest.raises(ConfigError, match="pool_ratio"):
        create_compressor("meanpool", pool_ratio=0, model="x")
    with pytest.raises(ConfigError, match="positions"):
        create_compressor("meanpool", positions="diagonal", model="x")


def test_cache_is_the_mean_of_the_encoders_keys_at_grouped_positions(tiny_dir):
    """With the adapter at identity the soft prompt is exactly the base model's own per-layer keys/values at
    positions ``offset + i // r``, averaged over each group; a second chunk continues where the first one ended."""
    c = build(tiny_dir, chunk_tokens=8)
    ids = c.tokenizer(DOC, add_special_tokens=False)["input_ids"][:14]  # 2 chunks of 7 -> 2 + 2 groups
    text = c.tokenizer.decode(ids)
    assert c.tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    span = c.encode_spans([text])[0]
    assert span.num_tokens == 4 and span.chunks == 2
    backbone = c.module.encoder.backbone
    for chunk, offset in ((ids[:7], 0), (ids[7:], 2)):
        positions = torch.tensor([[offset + i // 4 for i in range(7)]])
        cache = new_cache(c.llm)
        with torch.no_grad():
            out = backbone(input_ids=torch.tensor([chunk]), position_ids=positions, use_cache=True,
                           **cache_kwargs(backbone, cache))
        cache = output_cache(out) or cache
        for layer, (keys, values) in zip(cache.layers, span.kv):
            want_k = torch.stack([layer.keys[0, :, :4].mean(1),
                                  layer.keys[0, :, 4:7].mean(1)], 1)
            want_v = torch.stack([layer.values[0, :, :4].mean(1), layer.values[0, :, 4:7].mean(1)], 1)
            assert torch.allclose(keys[:, offset : offset + 2], want_k, atol=1e-5)
            assert torch.allclose(values[:, offset : offset + 2], want_v, atol=1e-5)


def test_gradients_reach_only_the_adapter_and_markers(tiny_dir):
    c = build(tiny_dir)
    perturb(c)
    module = c.module
    module.train()
    tok = c.tokenizer
    examples = [Example(ids, [], ids + [tok.eos_token_id], "ae")
                for ids in tok([DOC, DOC2], add_special_tokens=False)["input_ids"]]
    out = module.training_step(collate(examples, 16, tok.pad_token_id))
    out["loss"].backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "encoder.slots" not in dict(module.named_parameters())  # no memory slots at all
    assert trainable and all("lora_" in n or n == "markers" for n in trainable)
    for name, p in module.named_parameters():
        if name not in trainable:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_A" in n)


def test_ratio_generate_and_save_load_round_trip(tiny_dir, tmp_path):
    c = build(tiny_dir)
    perturb(c)
    soft = c.compress([DOC, DOC2], question="Who won?")
    spans = [p for p in soft.items[0] if hasattr(p, "kv") and p.kv is not None]
    n_doc = [len(c.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (DOC, DOC2)]
    assert [s.num_tokens for s in spans] == [sum(-(-len(x) // 4) for x in _chunks(n)) for n in n_doc]
    answer = c.generate(soft)
    c.save_pretrained(tmp_path / "mp")
    loaded = create_compressor(tmp_path / "mp")
    assert isinstance(loaded, MeanPoolCompressor) and loaded.config.pool_ratio == 4
    again = loaded.compress([DOC, DOC2], question="Who won?")
    for a, b in zip(soft.items[0], again.items[0]):
        if getattr(a, "kv", None) is not None:
            assert all(torch.allclose(x[0], y[0], atol=1e-6) for x, y in zip(a.kv, b.kv))
    assert loaded.generate(again) == answer


def _chunks(n, size=16):
    from mmcompress.soft.chunking import split_into_chunks

    return split_into_chunks(list(range(n)), size)


def test_tiny_meanpool_learns_to_reconstruct(tiny_lm):
    from tiny_models import CORPUS, learn_reconstruction, make_learnable_llama

    _, tok = tiny_lm
    ids = tok(CORPUS, add_special_tokens=False)["input_ids"]
    spans = [ids[i : i + 8] for i in range(0, 64, 8)]
    torch.manual_seed(0)
    c = MeanPoolCompressor(model=make_learnable_llama(tok), tokenizer=tok, pool_ratio=2, chunk_tokens=8, lora_r=8,
                           lora_alpha=16)
    first, final = learn_reconstruction(c, spans, tok, 8)
    assert first < 0.3 and final >= 0.9


def test_decoder_lora_is_trained_with_the_encoder_and_saved_with_it(tiny_dir, tmp_path):
    """``decoder_lora_r > 0``: the decoder reads through its own adapter, both adapters get gradients in one step,
    and the decoder adapter travels with the saved compressor (generation from a reload is the same)."""
    c = build(tiny_dir, decoder_lora_r=4)
    perturb(c)
    module = c.module
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any(".decoder." in n for n in names) and any(".default." in n for n in names)
    tok = c.tokenizer
    examples = [Example(ids, [], ids + [tok.eos_token_id], "ae") for ids in tok([DOC], add_special_tokens=False)["input_ids"]]
    module.train()
    module.training_step(collate(examples, 16, tok.pad_token_id))["loss"].backward()
    for adapter in ("default", "decoder"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters()
                   if f"lora_A.{adapter}" in n), adapter
    # the decoder adapter changes what the decoder computes; outside decoder() the encoder's adapter is active
    ids = torch.tensor([tok(DOC, add_special_tokens=False)["input_ids"]])
    backbone = module.encoder.backbone
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with torch.no_grad():
        with module.encoder.decoder():
            tuned = backbone(input_ids=ids).last_hidden_state
        frozen = base.model(input_ids=ids).last_hidden_state
        encoder_view = backbone(input_ids=ids).last_hidden_state
    assert not torch.allclose(tuned, frozen) and not torch.allclose(tuned, encoder_view)
    module.eval()
    answer = c.generate(c.compress(DOC), "Who?")
    c.save_pretrained(tmp_path / "d")
    loaded = create_compressor(tmp_path / "d")
    assert loaded.config.decoder_lora_r == 4 and loaded.generate(loaded.compress(DOC), "Who?") == answer


def test_a_decoder_adapter_added_on_continuation_starts_where_the_saved_compressor_stopped(tiny_dir, tmp_path):
    """Continuing a compressor saved without a decoder adapter with ``decoder_lora_r > 0`` (a later training stage):
    the new adapter is the only thing not loaded, it starts at zero (same generation as before), and it trains;
    any other missing tensor is still an error."""
    c = build(tiny_dir)
    perturb(c)
    c.module.eval()
    answer = c.generate(c.compress(DOC), "Who?")
    c.save_pretrained(tmp_path / "plain")
    grown = MeanPoolCompressor.from_pretrained(tmp_path / "plain", decoder_lora_r=4)
    grown.module.eval()
    assert grown.config.decoder_lora_r == 4 and grown.generate(grown.compress(DOC), "Who?") == answer
    assert any(".decoder." in n for n, p in grown.module.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="lora settings"):
        MeanPoolCompressor.from_pretrained(tmp_path / "plain", lora_r=8)


def test_qa_examples_follow_their_template_and_a_chat_turn_answers_without_a_leading_space(tiny_dir):
    """The QA examples read the question through the recipe's template; after a chat turn's ``assistant\\n`` the
    answer starts the line (as the instruct model writes it), after ``Answer:`` it follows a space."""
    from transformers import AutoTokenizer

    from mmcompress.soft.losses import CHAT_QA_TEMPLATE, QA_TEMPLATE, QADataset

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    row = {"context": DOC, "question": "Who won?", "answers": [{"text": "Denver Broncos"}]}
    for template, answer in ((QA_TEMPLATE, " Denver Broncos"), (CHAT_QA_TEMPLATE, "Denver Broncos")):
        (example,) = QADataset([row], tok, 64, template).examples
        assert tok.decode(example.prompt) == template.format(question="Who won?")
        assert example.target == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_recipe_qa_template_names_resolve_and_a_template_without_the_question_is_refused():
    from mmcompress.soft.losses import CHAT_QA_TEMPLATE, QA_TEMPLATE
    from mmcompress.soft.tasks import qa_template

    assert qa_template("plain") == QA_TEMPLATE and qa_template("chatml") == CHAT_QA_TEMPLATE
    assert qa_template("Q: {question} A:") == "Q: {question} A:"
    with pytest.raises(ConfigError, match="chatml"):
        qa_template("chat")
