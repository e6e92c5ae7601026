"""Soft compression (icae, kv) on tiny random Llamas: gradients, chunk masks and positions, the KV cache contract,
batched generation with mixed text/soft prompts, save/load, and a learning test."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmcompress import create_compressor
from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.prompt import Prompt, TextSegment
from mmcompress.results import SoftPrompt, SoftSegment
from mmcompress.soft.chunking import TASK_IDS, make_chunks, split_into_chunks
from mmcompress.soft.icae import Icae
from mmcompress.soft.kv import KvCompressor, shift_rotary_keys
from mmcompress.soft.meanpool import MeanPoolCompressor
from mmcompress.soft.losses import IGNORE, Example, chunked_lm_loss, collate, full_lm_loss, sliced_lm_loss
from tiny_models import perturb

METHODS = [Icae, KvCompressor]
DOC = "Super Bowl 50 was an American football game to determine the champion of the National Football League."
DOC2 = "Paris is the capital and most populous city of France."


pytestmark = pytest.mark.usefixtures("one_thread")


def build(cls, tiny_dir, **kw):
    fields = {"num_slots": 4, "chunk_tokens": 16, "lora_r": 4, "max_new_tokens": 6, "device": "cpu", "dtype": "float32"}
    fields.update(kw)
    return cls(model=str(tiny_dir), **fields)


class FirstStepScores(LogitsProcessor):
    """Records the scores of the first generated position, one row per prompt of the batch."""

    scores = None

    def __call__(self, input_ids, scores):
        if self.scores is None:
            self.scores = scores.detach().clone()
        return scores


def batch_for(compressor, texts, task="ae"):
    tok = compressor.tokenizer
    examples = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        examples.append(Example(ids, [], ids + [tok.eos_token_id], task))
    return collate(examples, compressor.config.chunk_tokens, tok.pad_token_id)


# --------------------------------------------------------------------------------------------- chunking
def test_split_into_chunks_is_near_equal_and_lossless():
    ids = list(range(37))
    chunks = split_into_chunks(ids, 16)
    assert [len(c) for c in chunks] == [13, 13, 11]  # ceil(37/16)=3 chunks of ceil(37/3)=13
    assert sum(chunks, []) == ids
    assert split_into_chunks(list(range(16)), 16) == [list(range(16))]
    batch = make_chunks([list(range(5)), list(range(20))], 16, pad_id=99)
    assert batch.chunks_per_span() == [1, 2]
    assert batch.ids[0].tolist() == [99] * 5 + list(range(5))  # left-padded: slots land at the same index
    assert batch.index.tolist() == [0, 0, 1]


# --------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cls", METHODS)
def test_gradients_reach_only_trainable_parameters(cls, tiny_dir):
    c = build(cls, tiny_dir)
    perturb(c)
    module = c.module
    module.train()
    out = module.training_step(batch_for(c, [DOC, DOC2]))
    out["loss"].backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n in ("markers", "encoder.slots") for n in trainable)
    for name, p in module.named_parameters():
        if name not in trainable:
            assert p.grad is None, f"frozen {name} got a gradient"
    grads = {n: p.grad for n, p in module.named_parameters() if n in trainable}
    assert grads["encoder.slots"].abs().sum() > 0
    assert grads["markers"][TASK_IDS["ae"]].abs().sum() > 0 and grads["markers"][TASK_IDS["qa"]].abs().sum() == 0
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    # a few hundred parameters on the tiny model: adapter + slots + markers, nothing of the base
    base = sum(p.numel() for n, p in module.named_parameters() if n not in trainable)
    assert sum(p.numel() for n, p in module.named_parameters() if n in trainable) < 0.2 * base


def test_sliced_loss_equals_full_vocabulary_loss(tiny_dir):
    c = build(Icae, tiny_dir)
    batch = batch_for(c, [DOC, DOC2])
    module = c.module
    chunks = module.chunks_from_batch(batch)
    hidden, labels = module.decoder_hidden(module.compress_chunks(chunks), chunks, batch)
    a, acc_a = sliced_lm_loss(hidden, labels, module.encoder.lm_head)
    b, acc_b = full_lm_loss(hidden, labels, module.encoder.lm_head)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(acc_a, acc_b)
    assert (labels != IGNORE).sum() == sum(len(c.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                                           for t in (DOC, DOC2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_loss_equals_sliced_loss_and_its_gradient(dtype, weighted):
    """The fused, chunked LM head + cross-entropy gives the sliced loss's value, accuracy and hidden-state gradient,
    whatever the chunk size (one row, an uneven split, all rows at once), with and without loss weights."""
    torch.manual_seed(0)
    vocab, width = 50, 16
    head = torch.nn.Linear(width, vocab, bias=False).to(dtype).requires_grad_(False)
    hidden = torch.randn(3, 9, width, dtype=dtype)
    labels = torch.randint(0, vocab, (3, 9))
    labels[0, :4] = IGNORE
    labels[2, 6:] = IGNORE
    weights = torch.rand(3, 9) + 0.5 if weighted else None

    def loss_and_grad(fn, **kwargs):
        h = hidden.clone().requires_grad_(True)
        loss, accuracy = fn(h, labels, head, weights, **kwargs)
        loss.backward()
        return loss, accuracy, h.grad

    ref_loss, ref_acc, ref_grad = loss_and_grad(sliced_lm_loss)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for rows in (1, 7, 100):
        loss, acc, grad = loss_and_grad(chunked_lm_loss, chunk_bytes=rows * 4 * vocab)
        assert abs(float(loss) - float(ref_loss)) < tol and float(acc) == float(ref_acc)
        assert torch.allclose(grad.float(), ref_grad.float(), atol=tol, rtol=tol), rows
    with torch.no_grad():  # evaluation: the same loss, no gradient built
        assert abs(float(chunked_lm_loss(hidden, labels, head, weights)[0]) - float(ref_loss)) < tol


def test_chunked_loss_falls_back_to_sliced_for_a_head_that_trains():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=False)
    hidden, labels = torch.randn(2, 5, 8), torch.randint(0, 20, (2, 5))
    loss, _ = chunked_lm_loss(hidden, labels, head)
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert torch.allclose(loss, sliced_lm_loss(hidden, labels, head)[0])
    head.requires_grad_(False)  # no labelled row: a zero loss that still backpropagates
    hidden.requires_grad_(True)
    loss, accuracy = chunked_lm_loss(hidden, torch.full_like(labels, IGNORE), head)
    loss.backward()
    assert float(loss) == 0.0 and float(accuracy) == 0.0 and hidden.grad is not None


def test_the_trainer_sets_the_soft_model_loss_and_both_train_alike(tiny_dir, tmp_path, monkeypatch):
    """``train.lm_loss`` reaches the soft model; a step under either loss gives the same loss and LoRA gradients."""
    from mmcompress.soft.losses import LinearCrossEntropy
    from mmcompress.training.trainer import TrainConfig, Trainer

    fused = []  # the chunked loss runs fused here (no fallback to the sliced one)
    apply = LinearCrossEntropy.apply
    monkeypatch.setattr(LinearCrossEntropy, "apply", staticmethod(lambda *a: fused.append(1) or apply(*a)))

    c = build(MeanPoolCompressor, tiny_dir, pool_ratio=4)
    perturb(c)
    assert c.module.lm_loss == "chunked"  # the default
    batch = batch_for(c, [DOC, DOC2])

    def step(loss):
        c.module.lm_loss = loss
        c.module.zero_grad(set_to_none=True)
        out = c.module.training_step(batch)
        out["loss"].backward()
        return out["loss"].detach(), {n: p.grad.clone() for n, p in c.module.named_parameters() if p.grad is not None}

    (chunked, g_chunked), (sliced, g_sliced) = step("chunked"), step("sliced")
    assert fused == [1]
    assert torch.allclose(chunked, sliced, atol=1e-5) and g_chunked.keys() == g_sliced.keys() and g_chunked
    assert all(torch.allclose(g_chunked[n], g_sliced[n], atol=1e-5, rtol=1e-4) for n in g_chunked)
    data = [Example(list(range(3, 19)), [], list(range(3, 19)) + [2], "ae")] * 2
    c.module.lm_loss = "chunked"  # as built; the trainer's setting must change it
    Trainer(c.module, TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, lm_loss="sliced",
                                  progress=False), data, collate_fn=lambda rows: collate(rows, 16, 0))
    assert c.module.lm_loss == "sliced"
    with pytest.raises(ConfigError, match="lm_loss must be chunked or sliced"):
        TrainConfig(lm_loss="full")


# ---------------------------------------------------------------------------------- masks and positions
@pytest.mark.parametrize("output", ["hidden", "kv"])
def test_padded_chunk_batch_equals_each_chunk_alone(output, tiny_dir):
    c = build(KvCompressor, tiny_dir)
    perturb(c)
    enc = c.module.encoder
    tok = c.tokenizer
    spans = [tok(t, add_special_tokens=False)["input_ids"] for t in (DOC, DOC2, "The river flows to the sea.")]
    positions = "prefix" if output == "kv" else "standard"
    together = enc.encode(make_chunks(spans, 16, tok.pad_token_id), output=output, positions=positions)
    chunks = make_chunks(spans, 16, tok.pad_token_id)
    row = 0
    for s in spans:
        alone = enc.encode(make_chunks([s], 16, tok.pad_token_id), output=output, positions=positions)
        n = len(split_into_chunks(s, 16))
        if output == "hidden":
            assert torch.allclose(together[row : row + n], alone, atol=1e-5)
        else:
            for (k1, v1), (k2, v2) in zip(together, alone):
                assert torch.allclose(k1[row : row + n], k2, atol=1e-5) and torch.allclose(v1[row : row + n], v2, atol=1e-5)
        row += n
    assert row == chunks.ids.shape[0] and chunks.ids.shape[0] > len(spans)  # some span was split


def test_prefix_positions_are_a_rotation_of_standard_ones(tiny_dir):
    """Prefix mode = same computation, keys rotated so that chunk c's slots sit at positions c*K..c*K+K-1."""
    c = build(KvCompressor, tiny_dir)
    perturb(c)
    enc = c.module.encoder
    ids = c.tokenizer(DOC, add_special_tokens=False)["input_ids"]
    chunks = make_chunks([ids], 16, c.tokenizer.pad_token_id)
    std = enc.encode(chunks, output="kv", positions="standard")
    pre = enc.encode(chunks, output="kv", positions="prefix")
    lengths = chunks.mask.sum(1)
    backbone = enc.backbone
    for n in range(chunks.ids.shape[0]):
        delta = int(chunks.index[n]) * enc.num_slots - int(lengths[n])
        for (ks, vs), (kp, vp) in zip(std, pre):
            assert torch.allclose(vs[n], vp[n], atol=1e-5)  # values carry no position
            assert torch.allclose(shift_rotary_keys(ks[n], delta, backbone), kp[n], atol=1e-5)
    assert torch.allclose(enc.encode(chunks, "hidden", "standard"), enc.encode(chunks, "hidden", "prefix"), atol=1e-5)


def test_kv_cache_matches_a_manual_decoder_forward(tiny_dir):
    """With an empty context the slots' KV is the decoder's own cache of the slot embeddings (fresh LoRA = identity):
    decoding marker + text after that cache must equal one plain forward over [slots, marker, text]."""
    c = build(KvCompressor, tiny_dir)
    module = c.module
    tok = c.tokenizer
    texts = ["Paris is the capital.", "The quick brown fox jumps over the lazy dog."]
    examples = [Example([], [], tok(t, add_special_tokens=False)["input_ids"], "lm") for t in texts]
    batch = collate(examples, 16, tok.pad_token_id)
    chunks = module.chunks_from_batch(batch)
    hidden, labels = module.decoder_hidden(module.compress_chunks(chunks), chunks, batch)
    llm = module.encoder.llm
    for b, t in enumerate(texts):
        ids = torch.tensor(tok(t, add_special_tokens=False)["input_ids"])
        inputs = torch.cat([module.encoder.slots, module.markers[TASK_IDS["lm"]][None], llm.get_input_embeddings()(ids)])
        with module.encoder.decoder():
            manual = module.encoder.backbone(inputs_embeds=inputs[None]).last_hidden_state[0, module.encoder.num_slots:]
        assert torch.allclose(hidden[b, : 1 + len(ids)], manual, atol=1e-4)
        # and the logits the loss reads are those of that forward
        assert torch.allclose(llm.lm_head(hidden[b, : 1 + len(ids)]), llm.lm_head(manual), atol=1e-4)


def test_shift_rotary_keys_composes_positions(tiny_lm):
    model, _ = tiny_lm
    backbone = model.model
    keys = torch.randn(2, 5, 8)  # [H, T, d]
    pos = torch.arange(5)[None]
    cos, sin = backbone.rotary_emb(keys, pos)
    from mmcompress.models.rotary import _rotate_half

    rotated = keys * cos[0] + _rotate_half(keys) * sin[0]
    cos7, sin7 = backbone.rotary_emb(keys, pos + 7)
    assert torch.allclose(shift_rotary_keys(rotated, 7, backbone), keys * cos7[0] + _rotate_half(keys) * sin7[0], atol=1e-5)


# ----------------------------------------------------------------------------------------- compress/generate
@pytest.mark.parametrize("cls", METHODS)
def test_compress_keeps_instruction_and_question_as_text(cls, tiny_dir):
    c = build(cls, tiny_dir)
    soft = c.compress([DOC, DOC2], instruction="Answer briefly.", question="Which city?")
    assert isinstance(soft, SoftPrompt) and len(soft) == 1
    kinds = [type(p).__name__ for p in soft.items[0]]
    assert kinds == ["TextSegment", "SoftSegment", "SoftSegment", "TextSegment"]
    assert soft.items[0][0].text == "Answer briefly." and soft.items[0][-1].text == "Which city?"
    doc = soft.items[0][1]
    n = len(c.tokenizer(DOC, add_special_tokens=False)["input_ids"])
    assert doc.origin_tokens == n and doc.chunks == -(-n // 16) and doc.num_tokens == 4 * doc.chunks
    assert soft.origin_tokens[0] == len(c.tokenizer(soft_text(DOC, DOC2), add_special_tokens=False)["input_ids"])
    assert soft.ratio > 1.5 and soft.to_dict()["prompts"][0]["pieces"][1]["kind"] == doc.kind


def soft_text(*docs):
    return "\n\n".join(["Answer briefly.", *docs, "Which city?"])


@pytest.mark.parametrize("cls", METHODS)
def test_batched_generation_equals_one_by_one(cls, tiny_dir):
    # learned markers for kv: its last prompt has no question, and 500xCompressor's (default) fixed markers put
    # nothing before a question, so without one there is nothing to decode from
    c = build(cls, tiny_dir, **({"marker_ids": None} if cls is KvCompressor else {}))
    perturb(c)
    prompts = [[DOC], [DOC2, DOC], ["The river flows to the sea."]]
    soft = c.compress_batch(prompts, instruction="Use the documents.")
    questions = ["Who won?", "Which city is the capital of France?", None]
    first_step = FirstStepScores()
    together = c.generate(soft, questions, logits_processor=LogitsProcessorList([first_step]))
    alone = [c.generate(soft[i], questions[i])[0] for i in range(len(prompts))]
    assert together == alone
    # the prompts differ, so the decoder's first-step scores do (a tiny random model may still decode alike)
    scores = first_step.scores
    assert scores.shape[0] == 3 and not torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[1], scores[2])
    recon = c.reconstruct(c.compress(DOC))
    assert isinstance(recon[0], str)


def test_icae_embeddings_view_and_bad_input(tiny_dir):
    c = build(Icae, tiny_dir)
    soft = c.compress_batch([DOC, DOC2])
    emb = soft.embeddings
    assert emb.shape[0] == 2 and emb.shape[2] == c.llm.config.hidden_size
    assert soft.soft_mask.sum(1).tolist() == soft.soft_tokens
    with pytest.raises(InvalidPromptError, match="empty"):
        c.compress("   ")
    with pytest.raises(ConfigError, match="fixed ratio"):
        c.compress(DOC, rate=0.5)
    with pytest.raises(InvalidPromptError, match="max_input_tokens"):
        build(Icae, tiny_dir, max_input_tokens=8).compress(DOC)
    with pytest.raises(ValueError, match="exactly one"):
        SoftSegment()


# ------------------------------------------------------------------------------------------- reconstruction
# icae reads a BOS before a span (so before its first chunk only): off here, so that every chunk reads as if alone
LAYOUTS = [(Icae, {"encoder_bos": False}), (KvCompressor, {}), (KvCompressor, KvCompressor.config_class.MMCOMPRESS_VARIANT),
           (MeanPoolCompressor, {"pool_ratio": 4}), (MeanPoolCompressor, {"pool_ratio": 4, "positions": "standard"})]


def same_soft(a: SoftSegment, b: SoftSegment) -> bool:
    if a.embeddings is not None:
        return torch.allclose(a.embeddings, b.embeddings, atol=1e-5)
    return all(torch.allclose(x[0], y[0], atol=1e-5) and torch.allclose(x[1], y[1], atol=1e-5)
               for x, y in zip(a.kv, b.kv))


@pytest.mark.parametrize("cls,kw", LAYOUTS, ids=["icae", "kv-500x", "kv-mmcompress", "meanpool", "meanpool-standard"])
def test_reconstruct_reads_each_chunk_as_if_it_had_been_compressed_alone(cls, kw, tiny_dir):
    """A span of 3 chunks: each chunk's part of the soft prompt, keys rotated back to position 0, is the soft prompt
    of that chunk's text compressed alone, and ``reconstruct`` regenerates each chunk from it (the task the
    autoencoder trains on) and joins them; ``per_chunk=False`` reads the whole span at once."""
    c = build(cls, tiny_dir, **{k: v for k, v in kw.items() if k != "pool_ratio" or cls is MeanPoolCompressor})
    perturb(c)
    tok = c.tokenizer
    ids = tok(" ".join([DOC, DOC2, DOC]), add_special_tokens=False)["input_ids"][:40]
    own = split_into_chunks(ids, 16)  # 14, 14, 12 tokens
    texts = [tok.decode(x) for x in [ids, *own]]
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in texts] == [ids, *own]
    soft = c.compress(texts[0])
    span = soft.items[0][0]
    assert span.chunks == 3 and [n for n, _ in span.chunk_layout] == [14, 14, 12]
    parts = c.chunk_segments(span)
    alone = [c.compress(t) for t in texts[1:]]
    assert len(parts) == 3 and all(same_soft(p, a.items[0][0]) for p, a in zip(parts, alone))
    assert sum(p.num_tokens for p in parts) == span.num_tokens
    assert c.reconstruct(soft) == ["".join(c.reconstruct(a)[0] for a in alone)]
    assert c.reconstruct(soft, per_chunk=False) == c.generate(soft, task="ae")


def test_reconstruct_joins_spans_and_leaves_kept_text_out(tiny_dir):
    c = build(MeanPoolCompressor, tiny_dir)
    perturb(c)
    soft = c.compress(Prompt.from_documents([DOC, DOC2], instruction="Use the documents.", question="Which city?"))
    assert [type(p) for p in soft.items[0]].count(SoftSegment) == 2
    each = [c.reconstruct(c.compress(d))[0] for d in (DOC, DOC2)]
    assert c.reconstruct(soft) == ["\n\n".join(each)]
    # each chunk stops at its own length + 8 tokens, or earlier at max_new_tokens
    short = c.compress("The river flows to the sea.")
    assert short.items[0][0].chunks == 1
    full, capped = c.reconstruct(short)[0], c.reconstruct(short, max_new_tokens=2)[0]
    # compared as generate()'s own 2-token output: the tiny model's byte tokens need not re-tokenize to 2 tokens
    assert capped == c.generate(short, None, task="ae", max_new_tokens=2)[0]
    assert full.startswith(capped) and len(full) > len(capped)


# ------------------------------------------------------------------------------------------------ save/load
@pytest.mark.parametrize("cls", METHODS)
def test_save_load_round_trip_gives_identical_outputs(cls, tiny_dir, tmp_path):
    c = build(cls, tiny_dir)
    perturb(c, seed=3)
    with torch.no_grad():
        c.module.encoder.slots.add_(0.1)
    c.save_pretrained(tmp_path / "saved")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == ["mmcompress_config.json", "trainable.safetensors"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "saved" / "trainable.safetensors"))
    assert set(saved) == {n for n, p in c.module.named_parameters() if p.requires_grad}  # no base weights
    loaded = create_compressor(tmp_path / "saved")
    assert type(loaded) is cls and loaded.config == c.config
    a, b = c.compress(DOC), loaded.compress(DOC)
    sa, sb = a.items[0][0], b.items[0][0]
    if cls is Icae:
        assert torch.equal(sa.embeddings, sb.embeddings)
    else:
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(sa.kv, sb.kv))
    assert c.generate(a, "Who?") == loaded.generate(b, "Who?")
    # the round trip is not vacuous: a fresh compressor (no trained weights) gives other soft tokens
    sf = build(cls, tiny_dir).compress(DOC).items[0][0]
    if cls is Icae:
        assert not torch.allclose(sf.embeddings, sa.embeddings)
    else:
        assert not all(torch.allclose(x[0], y[0]) for x, y in zip(sf.kv, sa.kv))


def test_loading_with_a_different_shape_fails_clearly(tiny_dir, tmp_path):
    c = build(Icae, tiny_dir)
    c.save_pretrained(tmp_path / "s")
    with pytest.raises(ConfigError, match="does not match"):
        Icae.from_pretrained(tmp_path / "s", lora_r=8)
    with pytest.raises(ConfigError, match="not 'kv'"):
        KvCompressor.from_pretrained(tmp_path / "s")


# ------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("cls", METHODS)
def test_tiny_compressor_learns_to_reconstruct_short_spans(cls, tiny_lm):
    _, tok = tiny_lm
    from tiny_models import CORPUS, learn_reconstruction, make_learnable_llama

    ids = tok(CORPUS, add_special_tokens=False)["input_ids"]
    spans = [ids[i : i + 6] for i in range(0, 48, 6)]
    torch.manual_seed(0)
    c = cls(model=make_learnable_llama(tok), tokenizer=tok, num_slots=4, chunk_tokens=6, lora_r=8, lora_alpha=16)
    first, final = learn_reconstruction(c, spans, tok, 6)
    assert first < 0.2 and final >= 0.9


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("task", ["icae", "kv"])
def test_train_recipe_runs_resumes_and_loads(task, tiny_dir, tmp_path):
    import json

    import yaml

    from mmcompress.cli import main
    from tiny_models import CORPUS

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([CORPUS] * 6))
    recipe = {
        "task": task,
        "model": {"model": str(tiny_dir), "num_slots": 4, "chunk_tokens": 16, "lora_r": 4, "device": "cpu",
                  "dtype": "float32"},
        "data": {"text": str(text), "eval_fraction": 0.34, "context_tokens": 16, "continuation_tokens": 8,
                 "lm_ratio": 0.5, "eval_examples": 4},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "save_every": 2,
                  "log_every": 1, "eval_every": 2, "progress": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path), "--set", "train.max_steps=2"]) == 0
    assert main(["train", "--config", str(path), "--resume"]) == 0  # continues from checkpoint-2 to step 4
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert any("eval/token_accuracy" in r for r in log)
    loaded = create_compressor(tmp_path / "run" / "final")
    assert loaded.name == task and len(loaded.generate(loaded.compress(DOC), "Who?")) == 1


def test_staged_recipe_runs_a_ratio_curriculum_each_stage_from_the_last(tiny_dir, tmp_path, capsys):
    """``stages``: 2x then 4x; the second stage starts from the first's trained result; --resume skips done stages."""
    import json

    import yaml

    from mmcompress.cli import main
    from mmcompress.factory import read_saved_meta
    from tiny_models import CORPUS

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([CORPUS] * 6))
    recipe = {
        "task": "meanpool",
        "model": {"model": str(tiny_dir), "pool_ratio": 2, "chunk_tokens": 16, "lora_r": 4, "device": "cpu",
                  "dtype": "float32"},
        "data": {"text": str(text), "eval_fraction": 0.34, "context_tokens": 16, "eval_examples": 2},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "lr": 1e-3, "save_every": 0,
                  "log_every": 1, "eval_every": 0, "progress": False},
        "stages": [{"name": "two_x", "train": {"max_steps": 2}},
                   {"name": "four_x", "model": {"pool_ratio": 4}, "train": {"max_steps": 3, "lr": 5e-4}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path)]) == 0
    first, second = tmp_path / "run" / "1-two_x", tmp_path / "run" / "2-four_x"
    assert read_saved_meta(first / "final")["config"]["pool_ratio"] == 2
    ran = yaml.safe_load((second / "recipe.yaml").read_text())
    assert ran["init_from"] == str(first / "final") and ran["train"]["lr"] == 5e-4
    steps = [r["step"] for r in map(json.loads, (second / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3]  # a fresh run of its own length, not the first stage's continuation
    loaded = create_compressor(tmp_path / "run" / "final")
    assert loaded.config.pool_ratio == 4 and len(loaded.generate(loaded.compress(DOC), "Who?")) == 1
    before = (first / "log.jsonl").read_text()
    assert main(["train", "--config", str(path), "--resume"]) == 0  # both done: nothing reruns
    assert (first / "log.jsonl").read_text() == before
    capsys.readouterr()
    recipe["stages"].append({"name": "four_x", "train": {"max_steps": 1}})
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path), "--overwrite"]) == 2
    assert "unique 'name'" in capsys.readouterr().err


def test_the_shipped_4x_recipe_runs_every_stage_on_a_tiny_model(tiny_dir, tmp_path):
    """``soft-smollm2-4x`` as shipped (its stages' model changes: a decoder adapter added in stage 5, the encoder's
    LoRA cut from r16 to r8 in stage 6), one step per stage on a tiny Llama: each stage loads the last one's result
    and the final compressor has the shipped shapes."""
    from mmcompress.training.tasks import load_recipe, run_stages
    from tiny_models import CORPUS

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join([CORPUS] * 6))
    probe = load_recipe("soft-smollm2-4x")
    overrides = {"model.model": str(tiny_dir), "model.dtype": "float32", "model.chunk_tokens": 16,
                 "model.model_kwargs": None, "data.text": str(text), "data.eval_fraction": 0.34,
                 "data.context_tokens": 16, "data.eval_examples": 2, "train.output_dir": str(tmp_path / "run"),
                 "train.compile": "no", "train.save_every": 0, "train.eval_batches": 1, "train.progress": False}
    overrides.update({f"stages.{i}.train.max_steps": 1 for i in range(len(probe["stages"]))})
    run_stages(load_recipe("soft-smollm2-4x", overrides))
    final = create_compressor(tmp_path / "run" / "final")
    models = [stage.get("model", {}) for stage in probe["stages"]]
    last = {field: [m[field] for m in models if field in m][-1] for field in ("lora_r", "decoder_lora_r")}
    assert (final.config.lora_r, final.config.decoder_lora_r) == (last["lora_r"], last["decoder_lora_r"])
    assert final.config.lora_r < probe["model"]["lora_r"]  # the cut happened on the way
    assert len(final.generate(final.compress(DOC), "Who?")) == 1


def test_cli_compress_answers_from_a_saved_compressor(tiny_dir, tmp_path, capsys):
    import json

    from mmcompress.cli import main

    build(Icae, tiny_dir).save_pretrained(tmp_path / "icae")
    assert main(["compress", "--method", str(tmp_path / "icae"), DOC, "--question", "Who won?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "icae" and isinstance(out["answer"], str)
    assert [p["kind"] for p in out["prompts"][0]["pieces"]] == ["embeddings", "text"]
    assert out["prompts"][0]["pieces"][1]["text"] == "Who won?"
    assert main(["compress", "--method", str(tmp_path / "icae"), DOC]) == 0
    assert "reconstruction above" in capsys.readouterr().err  # the stats line goes to stderr
    assert main(["compress", "--method", str(tmp_path / "icae"), DOC, "--rate", "0.5"]) == 2


# ------------------------------------------------------------------------------------------------- pipeline
def test_hard_then_soft_pipeline_reports_total_ratio_and_stages(tiny_dir):
    from mmcompress import Pipeline

    soft_stage = build(Icae, tiny_dir)
    pipe = Pipeline([{"compressor": "truncate", "model": str(tiny_dir), "rate": 0.5}, soft_stage])
    docs = [DOC + " " + DOC2, "The quick brown fox jumps over the lazy dog. " * 3]
    result = pipe.compress(docs, question="Who won?")
    stages = result.extras["stages"]
    assert [s["method"] for s in stages] == ["truncate", "icae"]
    tok = soft_stage.tokenizer
    original = Prompt.from_documents(docs, question="Who won?").text
    assert result.origin_tokens == [len(tok(original, add_special_tokens=False)["input_ids"])]
    assert result.ratio == pytest.approx(result.origin_total / result.compressed_total)
    # the total is the product of the stages' ratios (same tokenizer throughout here)
    assert result.ratio == pytest.approx(stages[0]["ratio"] * stages[1]["ratio"], rel=0.05)
    assert result.ratio > soft_stage.compress(docs, question="Who won?").ratio * 1.3
    assert result.items[0][-1].text == "Who won?"  # the question survives both stages verbatim
    assert len(pipe.generate(result)) == 1
    from mmcompress.evaluation.reconstruction import evaluate_reconstruction

    report = evaluate_reconstruction(pipe, [DOC, DOC2], max_new_tokens=4)
    assert report.texts == 2 and 0.0 <= report.bleu4 <= 1.0 and report.ratio > 1


def test_pipeline_routes_a_role_to_its_own_method(tiny_dir):
    from mmcompress import Pipeline

    instruction = "Answer the question using the documents. Be brief and cite the document you used for it."
    pipe = Pipeline([build(KvCompressor, tiny_dir)],
                    routes={"instruction": {"compressor": "truncate", "model": str(tiny_dir), "rate": 0.5}})
    result = pipe.compress([DOC], instruction=instruction, question="Who?")
    first = result.items[0][0]
    assert isinstance(first, TextSegment) and instruction.startswith(first.text) and len(first.text) < len(instruction)
    assert [s["kind"] for s in result.extras["stages"]] == ["route:instruction", "stage"]
    assert isinstance(result.items[0][1], SoftSegment) and result.items[0][1].kind == "kv"
    assert len(pipe.generate(result)) == 1
    with pytest.raises(ConfigError, match="only the last"):
        Pipeline([build(Icae, tiny_dir), {"compressor": "truncate", "model": str(tiny_dir)}])


@pytest.mark.parametrize("cls", METHODS)
def test_small_qa_eval_compressed_full_and_no_context(cls, tiny_dir):
    from mmcompress.evaluation.soft_qa import evaluate_soft_qa

    c = build(cls, tiny_dir)
    rows = [{"context": DOC, "question": "Which league?", "answers": [{"text": "National Football League"}]},
            {"context": DOC2, "question": "Capital of France?", "answers": ["Paris"]},
            {"context": "Berlin is the capital of Germany.", "question": "Germany?", "answers": ["Berlin"]}]
    reports = {s: evaluate_soft_qa(c, rows, batch_size=2, max_new_tokens=3, setting=s)
               for s in ("compressed", "full_context", "no_context")}
    assert all(r.questions == 3 and len(r.answers) == 3 and 0 <= r.f1 <= 1 for r in reports.values())
    assert reports["compressed"].ratio > 1.0 and reports["full_context"].ratio == pytest.approx(1.0, abs=0.01)
    mixed = c.compress_batch([Prompt.from_documents([DOC], question="Who?"),
                              Prompt((TextSegment("Who?", role="question"),))])
    assert mixed.soft_tokens[1] == 0 and len(c.generate(mixed)) == 2  # a batch with and without soft spans


def test_held_out_tail_splits_into_disjoint_validation_and_test_documents():
    from mmcompress.soft.tasks import held_out_part

    held = [f"doc {i}" for i in range(7)]
    validation, test = held_out_part(held, "validation"), held_out_part(held, "test")
    assert validation == held[:3] and test == held[3:]  # contiguous halves: no document in both
    assert held_out_part(held, "all") == held
    with pytest.raises(ConfigError, match="eval_split"):
        held_out_part(held, "train")
    with pytest.raises(ConfigError, match="at least 2"):
        held_out_part(held[:1], "test")
