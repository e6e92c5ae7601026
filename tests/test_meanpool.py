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


@pytest.mark.parametrize("frozen_matmuls", ["native", "int8"])
def test_tiny_meanpool_learns_to_reconstruct(tiny_lm, frozen_matmuls):
    from mmcompress.models.switchback import int8_frozen_linears
    from tiny_models import CORPUS, learn_reconstruction, make_learnable_llama

    _, tok = tiny_lm
    ids = tok(CORPUS, add_special_tokens=False)["input_ids"]
    spans = [ids[i : i + 8] for i in range(0, 64, 8)]
    torch.manual_seed(0)
    c = MeanPoolCompressor(model=make_learnable_llama(tok), tokenizer=tok, pool_ratio=2, chunk_tokens=8, lora_r=8,
                           lora_alpha=16)
    if frozen_matmuls == "int8":  # train.frozen_matmuls: int8 (SwitchBack); evaluated with the weights as they are
        assert int8_frozen_linears(c.module) > 0
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


def test_a_lower_rank_on_continuation_starts_from_the_saved_adapters_at_that_rank(tiny_dir, tmp_path):
    """A later stage with a lower ``lora_r`` / ``decoder_lora_r`` (to ship smaller weights) loads the saved adapters
    cut to that rank, scales folded in: when the saved updates already have that rank, the compressor is the same
    (same soft prompt, same answer) with fewer parameters."""
    c = build(tiny_dir, lora_r=4, lora_alpha=8, decoder_lora_r=4)
    perturb(c)
    with torch.no_grad():  # updates of rank 2: the last two directions of every adapter are off
        for name, p in c.module.named_parameters():
            if "lora_A" in name:
                p[2:] = 0
    c.module.eval()
    soft = c.compress(DOC)
    answer = c.generate(soft, "Who?")
    c.save_pretrained(tmp_path / "r4")
    cut = MeanPoolCompressor.from_pretrained(tmp_path / "r4", lora_r=2, lora_alpha=2, decoder_lora_r=2)
    cut.module.eval()
    shapes = {n: tuple(p.shape) for n, p in cut.module.named_parameters() if "q_proj.lora_A" in n}
    assert shapes and all(s[0] == 2 for s in shapes.values()), shapes
    again = cut.compress(DOC)
    for a, b in zip(soft.items[0], again.items[0]):
        if getattr(a, "kv", None) is not None:
            assert all(torch.allclose(x[0], y[0], atol=1e-5) for x, y in zip(a.kv, b.kv))
    assert cut.generate(again, "Who?") == answer
    cut.save_pretrained(tmp_path / "r2")
    assert create_compressor(tmp_path / "r2").config.lora_r == 2


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
    # a compressor's own setting takes the same names (it once read the name itself as the template)
    assert create_compressor("meanpool", model="x", qa_template="chatml").config.qa_template == CHAT_QA_TEMPLATE
    with pytest.raises(ConfigError, match="qa_template"):
        create_compressor("meanpool", model="x", qa_template="chat")


def test_chunks_of_a_span_are_encoded_in_one_pass_whatever_the_encoder_batch(tiny_dir):
    """A span's later chunks take their positions from its earlier ones; encoder batches that would cut a span
    (here 3 chunks per pass, spans of 4) must give the same soft prompts as one pass over everything."""
    from mmcompress.soft.encoder import span_batches

    c = build(tiny_dir, chunk_tokens=8)
    perturb(c)
    texts = [DOC, DOC2, DOC, DOC2]
    whole = c.encode_spans(texts)
    c.encode_batch_chunks = 3
    parts = c.encode_spans(texts)
    assert [s.chunks for s in whole] == [s.chunks for s in parts] and max(s.chunks for s in whole) > 3
    for a, b in zip(whole, parts):
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a.kv, b.kv))
    _, chunks = c.encode_chunks(texts)
    cuts = [(p.start, p.stop) for p in span_batches(chunks, 3)]
    starts = torch.cumsum(torch.tensor([0, *chunks.chunks_per_span()]), 0).tolist()
    assert all(start in starts and stop in starts for start, stop in cuts)


QUESTION = "Who won the game?"


def test_question_aware_encoder_reads_the_question_before_each_chunk_and_pools_only_the_chunk(tiny_dir):
    """``question_aware``: with the adapter at identity, each chunk's soft prompt is the base model's keys/values
    of ``question + chunk`` (question at the positions just before the chunk's first group, the chunk's tokens at
    ``offset + i // r``), averaged over the chunk's own tokens only; the size does not depend on the question."""
    from mmcompress.soft.losses import encoder_question_ids

    c = build(tiny_dir, chunk_tokens=8, question_aware=True)
    ids = c.tokenizer(DOC, add_special_tokens=False)["input_ids"][:14]  # 2 chunks of 7 -> 2 + 2 groups
    text = c.tokenizer.decode(ids)
    span = c.encode_spans([text], questions=[QUESTION])[0]
    plain = build(tiny_dir, chunk_tokens=8).encode_spans([text])[0]
    assert span.num_tokens == plain.num_tokens == 4 and span.origin_tokens == 14
    q = encoder_question_ids(c.tokenizer, QUESTION)
    backbone = c.module.encoder.backbone
    for chunk, offset in ((ids[:7], 0), (ids[7:], 2)):
        positions = torch.tensor([[offset - len(q) + i for i in range(len(q))] + [offset + i // 4 for i in range(7)]])
        cache = new_cache(c.llm)
        with torch.no_grad():
            out = backbone(input_ids=torch.tensor([q + chunk]), position_ids=positions, use_cache=True,
                           **cache_kwargs(backbone, cache))
        cache = output_cache(out) or cache
        n = len(q)
        for layer, (keys, values) in zip(cache.layers, span.kv):
            want_k = torch.stack([layer.keys[0, :, n : n + 4].mean(1), layer.keys[0, :, n + 4 : n + 7].mean(1)], 1)
            want_v = torch.stack([layer.values[0, :, n : n + 4].mean(1), layer.values[0, :, n + 4 : n + 7].mean(1)], 1)
            assert torch.allclose(keys[:, offset : offset + 2], want_k, atol=1e-5)
            assert torch.allclose(values[:, offset : offset + 2], want_v, atol=1e-5)
    other = c.encode_spans([text], questions=["Where was it played?"])[0]
    assert not torch.allclose(other.kv[1][0], span.kv[1][0])  # the soft prompt serves its question


def test_question_aware_compression_needs_the_question_and_round_trips(tiny_dir, tmp_path):
    from mmcompress.errors import InvalidPromptError

    c = build(tiny_dir, question_aware=True)
    perturb(c)
    with pytest.raises(InvalidPromptError, match="question_aware"):
        c.compress(DOC)
    soft = c.compress([DOC, DOC2], question=QUESTION)
    batch = c.compress_batch([c._coerce([DOC], QUESTION, None), c._coerce([DOC2], "Where?", None)])
    # in a batch each prompt's spans are read with that prompt's own question
    assert torch.allclose(batch.items[0][0].kv[-1][0], c.compress(DOC, question=QUESTION).items[0][0].kv[-1][0],
                          atol=1e-6)
    assert torch.allclose(batch.items[1][0].kv[-1][0], c.compress(DOC2, question="Where?").items[0][0].kv[-1][0],
                          atol=1e-6)
    answer = c.generate(soft)
    c.save_pretrained(tmp_path / "qa")
    loaded = create_compressor(tmp_path / "qa")
    assert loaded.config.question_aware and loaded.generate(loaded.compress([DOC, DOC2], question=QUESTION)) == answer


def test_question_aware_training_reads_each_examples_question_and_trains_the_adapter(tiny_dir):
    """QA examples carry their question for the encoder; the collate puts it before every chunk (outside the pooled
    mask), a text example without one is read as it is, and gradients reach the adapter only."""
    from transformers import AutoTokenizer

    from mmcompress.soft.losses import QA_TEMPLATE, QADataset, encoder_question_ids

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    row = {"context": DOC + " " + DOC2, "question": QUESTION, "answers": [{"text": "Denver Broncos"}]}
    (qa,) = QADataset([row], tok, 64, QA_TEMPLATE).examples
    assert qa.question == encoder_question_ids(tok, QUESTION)
    ids = tok(DOC2, add_special_tokens=False)["input_ids"]
    ae = Example(ids, [], ids + [tok.eos_token_id], "ae")
    c = build(tiny_dir, question_aware=True)
    perturb(c)
    batch = c.training_collate()([qa, ae])
    n_q = len(qa.question)
    chunk_rows = batch["chunk_span"] == 0
    own = batch["chunk_pool_mask"]
    assert torch.equal((batch["chunk_mask"] - own)[chunk_rows].sum(1), torch.full((int(chunk_rows.sum()),), n_q))
    assert torch.equal(batch["chunk_mask"][~chunk_rows], own[~chunk_rows])  # no question: nothing before it
    assert int(own[chunk_rows].sum()) == len(qa.context)
    module = c.module
    module.train()
    module.training_step(batch)["loss"].backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n == "markers" for n in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_A" in n)
    plain = build(tiny_dir).training_collate()([qa, ae])
    assert "chunk_pool_mask" not in plain and plain["chunk_ids"].shape[1] < batch["chunk_ids"].shape[1]


def test_qa_repeat_sets_the_share_of_qa_examples_in_the_training_mix(tiny_dir, tmp_path):
    """``data.qa_repeat`` puts the QA rows that many times in the training mix (the held-out rows never), and a
    value below 1 is refused."""
    import json

    from transformers import AutoTokenizer

    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([DOC * 3, DOC2 * 6, DOC * 2]), encoding="utf-8")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"context": DOC, "question": f"Q{i}?", "answers": [{"text": "a"}]})
                            for i in range(20)), encoding="utf-8")
    data = {**DATA_DEFAULTS, "text": str(text), "qa": str(qa), "context_tokens": 8, "eval_fraction": 0.3,
            "eval_split": "all"}
    once, held = build_datasets(data, tok, tok.eos_token_id)
    thrice, held3 = build_datasets({**data, "qa_repeat": 3}, tok, tok.eos_token_id)
    windows = len(once.datasets[0])
    assert len(once) == windows + 18 and len(thrice) == windows + 3 * 18
    assert sum(e.task == "qa" for e in thrice) == 3 * sum(e.task == "qa" for e in once) == 54
    assert len(held3) == len(held)
    with pytest.raises(ConfigError, match="qa_repeat"):
        build_datasets({**data, "qa_repeat": 0}, tok, tok.eos_token_id)


def test_span_tokens_add_autoencoding_spans_of_several_chunks_read_together(tiny_dir, tmp_path):
    """``data.span_tokens`` adds autoencoding windows of those sizes (training and held out) next to the
    ``context_tokens`` ones; the collate cuts each into encoder chunks that one decoder row reconstructs, and a bad
    size is refused."""
    from transformers import AutoTokenizer

    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([DOC * 6, DOC2 * 8, DOC * 4, DOC2 * 4]), encoding="utf-8")
    data = {**DATA_DEFAULTS, "text": str(text), "context_tokens": 16, "eval_fraction": 0.5, "eval_split": "all"}
    plain, _ = build_datasets(data, tok, tok.eos_token_id)
    mixed, held = build_datasets({**data, "span_tokens": [32, 48]}, tok, tok.eos_token_id)
    assert len(mixed.datasets) == 3 and len(mixed.datasets[0]) == len(plain)
    assert {len(e.context) for e in mixed.datasets[1]} == {32} and {len(e.context) for e in mixed.datasets[2]} == {48}
    assert all(e.task == "ae" and e.target == e.context + [tok.eos_token_id] for e in mixed.datasets[2])
    assert {len(e.context) for e in held} == {16, 32, 48}
    c = build(tiny_dir)  # chunk_tokens 16
    batch = c.training_collate()([mixed.datasets[0][0], mixed.datasets[2][0]])
    assert batch["chunk_span"].tolist() == [0, 1, 1, 1]  # the 48-token span is three chunks of one row
    assert (batch["labels"][1] != -100).sum() == 49  # the decoder reconstructs all of it, then EOS
    for bad in ([0], "64", [True]):
        with pytest.raises(ConfigError, match="span_tokens"):
            build_datasets({**data, "span_tokens": bad}, tok, tok.eos_token_id)


def test_entity_weight_weighs_the_named_entity_tokens_of_the_text_windows(tiny_dir, tmp_path):
    """``data.entity_weight``: the training windows (the same ids in the same order as without it) carry a loss
    weight per target token, ``entity_weight`` on the tokens of spaCy's named entities and numbers and 1 elsewhere
    (the EOS too); held-out windows stay unweighted; a bad weight is refused."""
    from transformers import AutoTokenizer

    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets
    from mmcompress.text_units import spacy_available

    if not spacy_available():
        pytest.skip("spaCy's English model is not installed")
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    doc = "Barack Obama visited Paris in 2009 and met 300 people at the Louvre. They talked for a long time. "
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([doc * 3, doc * 2, doc, doc]), encoding="utf-8")
    data = {**DATA_DEFAULTS, "text": str(text), "context_tokens": 16, "eval_fraction": 0.5, "eval_split": "all"}
    plain, _ = build_datasets(data, tok, tok.eos_token_id)
    weighted, held = build_datasets({**data, "entity_weight": 3.0}, tok, tok.eos_token_id)
    assert [e.target for e in weighted] == [e.target for e in plain]
    heavy, light = [], []  # the texts of the runs of weighted and of unweighted tokens
    for e in weighted:
        assert len(e.weights) == len(e.target) and e.weights[-1] == 1.0 and set(e.weights) <= {1.0, 3.0}
        run = [0]  # positions of the current run (the EOS ends the last one)
        for i in range(1, len(e.target)):
            if e.weights[i] != e.weights[i - 1] or i == len(e.target) - 1:
                (heavy if e.weights[i - 1] == 3.0 else light).append(tok.decode([e.target[j] for j in run]))
                run = []
            run.append(i)
    heavy, light = " | ".join(heavy), " | ".join(light)
    for name in ("Barack Obama", "Paris", "2009"):
        assert name in heavy
    for word in ("visited", "talked", "long time"):
        assert word in light and word not in heavy
    assert all(e.weights is None for e in held) and all(e.weights is None for e in plain)
    for bad in (0, "3", True):
        with pytest.raises(ConfigError, match="entity_weight"):
            build_datasets({**data, "entity_weight": bad}, tok, tok.eos_token_id)


def test_cloze_questions_blank_one_entity_of_their_window_and_answer_it_from_the_soft_prompt(tiny_dir, tmp_path):
    """``data.cloze_tokens``: each cloze example compresses a whole training window, asks (through the recipe's QA
    template) for the words that a quoted piece of that window leaves blank, and is trained on those words only;
    the blanked words are a named entity or number of the window and do not appear in the question; each window
    gives up to ``cloze_per_window`` questions on different entities; bad settings are refused."""
    from transformers import AutoTokenizer

    from mmcompress.soft.losses import CHAT_QA_TEMPLATE, ClozeDataset
    from mmcompress.soft.tasks import DATA_DEFAULTS, build_datasets
    from mmcompress.text_units import spacy_available

    if not spacy_available():
        pytest.skip("spaCy's English model is not installed")
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    doc = ("Barack Obama visited Paris in 2009 and met 300 people at the Louvre. They talked for a long time "
           "about the weather and the food. ")
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([doc * 4, doc * 3, doc, doc]), encoding="utf-8")
    data = {**DATA_DEFAULTS, "text": str(text), "context_tokens": 16, "eval_fraction": 0.5, "eval_split": "all",
            "cloze_tokens": 32, "cloze_per_window": 2, "qa_template": "chatml"}
    train, held = build_datasets(data, tok, tok.eos_token_id)
    windows, cloze = train.datasets
    assert not isinstance(windows, ClozeDataset) and isinstance(cloze, ClozeDataset)
    assert len(cloze) >= 4
    by_window: list[list] = []  # [context, answers]: a window's questions are consecutive
    for e in cloze:
        assert len(e.context) == 32 and e.task == "qa" and e.target[-1] == tok.eos_token_id
        question = tok.decode(e.prompt)
        assert question.startswith("<|im_start|>user\nWhich words fill the blank in") and " ___" in question
        assert tok.decode(e.prompt) == CHAT_QA_TEMPLATE.format(question=question.split("\n")[1].split(" Answer")[0])
        answer = tok.decode(e.target[:-1]).strip()
        assert answer in {"Barack Obama", "Obama", "Paris", "2009", "300", "Louvre", "the Louvre"}, answer
        assert answer in tok.decode(e.context) and answer not in question
        if not by_window or by_window[-1][0] != e.context:
            by_window.append([e.context, []])
        by_window[-1][1].append(answer)
    assert all(len(a) <= 2 and len(set(a)) == len(a) for _, a in by_window)
    assert any(len(a) == 2 for _, a in by_window)
    assert all(not isinstance(d, ClozeDataset) for d in getattr(held, "datasets", [held]))
    c = build(tiny_dir)
    batch = c.training_collate()([cloze[0]])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled == cloze[0].target  # only the answer (and EOS) is trained
    for bad in ({"cloze_tokens": -1}, {"cloze_tokens": "192"}, {"cloze_per_window": 0},
                {"text": None, "qa": None}):
        with pytest.raises(ConfigError, match="cloze"):
            build_datasets({**data, **bad}, tok, tok.eos_token_id)


def test_cloze_dataset_blanks_runs_of_marked_tokens_with_words_before_them():
    """Without spaCy: the runs of marked tokens are the candidate answers; a run needs 4 tokens before it in the
    window, one after it, and at most 8 tokens, and the quoted surroundings are the 12 tokens before and the 6 after."""
    from mmcompress.soft.losses import ClozeDataset, marked_runs

    class Words:  # a tokenizer whose ids are word indexes (w1 is 1, new words get new ids)
        eos_token_id = 0
        vocab = ["<eos>"] + [f"w{i}" for i in range(1, 40)]

        def decode(self, ids):
            return " ".join(self.vocab[i] for i in ids)

        def __call__(self, text, add_special_tokens=False):
            self.vocab += [w for w in dict.fromkeys(text.split()) if w not in self.vocab]
            return {"input_ids": [self.vocab.index(w) for w in text.split()]}

    assert marked_runs([0, 1, 1, 0, 1]) == [(1, 3), (4, 5)]
    window = list(range(1, 31))
    marks = [False] * 30
    for i in (2, 10, 11, 20, 29):  # too early (2), two tokens (10-11), one token (20), ending the window (29)
        marks[i] = True
    words = Words()
    data = ClozeDataset([window], [marks], words, "{question}", per_window=5, seed=0)
    answers = sorted(words.decode(e.target[:-1]) for e in data)
    assert answers == ["w11 w12", "w21"]
    question = {words.decode(e.target[:-1]): words.decode(e.prompt) for e in data}["w21"]
    assert question.startswith("Which") and "w9 w10" in question and "w22 w23 w24 w25 w26 w27" in question
    assert "w28" not in question and "w8 " not in question


def test_loss_weights_make_the_loss_the_weighted_mean_over_the_labelled_tokens(tiny_dir):
    """A batch with ``label_weights`` trains on the weighted mean of its tokens' losses: all ones give the plain
    loss, and weighing one example 5x gives ``(5 sum_0 + sum_1) / (5 n_0 + n_1)`` of the examples' own losses."""
    c = build(tiny_dir)
    c.module.eval()
    tok = c.tokenizer
    examples = [Example(ids, [], ids + [tok.eos_token_id], "ae")
                for ids in (tok(DOC, add_special_tokens=False)["input_ids"][:16],
                            tok(DOC2, add_special_tokens=False)["input_ids"][:12])]
    collate_fn = c.training_collate()

    def loss(items):
        with torch.no_grad():
            return float(c.module.training_step(collate_fn(items))["loss"])

    alone = [loss([e]) for e in examples]
    sizes = [len(e.target) for e in examples]
    assert loss([Example(**{**e.__dict__, "weights": [1.0] * len(e.target)}) for e in examples]) == pytest.approx(
        loss(examples), abs=1e-5)
    five = [Example(**{**examples[0].__dict__, "weights": [5.0] * sizes[0]}), examples[1]]
    expected = (5 * alone[0] * sizes[0] + alone[1] * sizes[1]) / (5 * sizes[0] + sizes[1])
    assert loss(five) == pytest.approx(expected, abs=1e-4)
    assert abs(loss(examples) - expected) > 1e-3  # the weights changed it


def test_teacher_answers_replace_the_gold_answers_of_the_qa_training_rows_only(tiny_dir, tmp_path):
    """``data.qa_answers: teacher``: each QA training example's target is what the compressor's own decoder answers
    from the full context as text (greedy, the recipe's template); held-out rows keep their gold answers; the answers
    are cached in the run folder and reused only while the questions match."""
    import json

    from mmcompress.evaluation.soft_qa import evaluate_soft_qa
    from mmcompress.soft.tasks import TEACHER_ANSWER_TOKENS, build_meanpool

    rows = [{"context": DOC if i % 2 else DOC2, "question": f"What is item {i}?", "answers": [{"text": "gold"}]}
            for i in range(10)]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "run"
    fields = {"pool_ratio": 4, "chunk_tokens": 16, "lora_r": 4, "device": "cpu", "dtype": "float32",
              "model": str(tiny_dir)}
    recipe = {"task": "meanpool", "model": fields, "train": {"output_dir": str(out)},
              "data": {"qa": str(qa), "qa_eval_fraction": 0.2, "eval_split": "all", "qa_answers": "teacher",
                       "context_tokens": 16}}
    setup = build_meanpool(recipe)
    teacher = build(tiny_dir)
    expected = evaluate_soft_qa(teacher, rows[:8], setting="full_context", max_new_tokens=TEACHER_ANSWER_TOKENS).answers
    tok = teacher.tokenizer
    eos = tok.eos_token_id
    targets = [ex.target for ex in setup.train_dataset]
    gold = tok(" gold", add_special_tokens=False)["input_ids"] + [eos]
    assert len(targets) >= 6 and gold not in targets  # the tiny model says something, and not the gold answer
    assert targets == [tok(" " + a.strip(), add_special_tokens=False)["input_ids"] + [eos] for a in expected if a]
    assert [ex.target for ex in setup.eval_dataset] == [gold] * 2
    cache = out / "teacher_answers.jsonl"
    assert [json.loads(line)["answer"] for line in cache.read_text().splitlines()] == expected
    # the cache is read back while the questions match ...
    cache.write_text("".join(json.dumps({"question": r["question"], "answer": "cached"}) + "\n" for r in rows[:8]))
    again = build_meanpool(recipe)
    assert {tuple(ex.target) for ex in again.train_dataset} == {tuple(tok(" cached", add_special_tokens=False)["input_ids"] + [eos])}
    # ... and regenerated when they do not
    rows[0]["question"] = "A different question?"
    qa.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    build_meanpool(recipe)
    assert json.loads(cache.read_text().splitlines()[0])["question"] == "A different question?"
    with pytest.raises(ConfigError, match="qa_answers"):
        build_meanpool({**recipe, "data": {**recipe["data"], "qa_answers": "silver"}})
