"""xRAG: frozen sentence encoder + trainable projector + frozen LLM, on tiny offline models (and a real-model tier)."""
from __future__ import annotations

import json

import pytest
import torch

from mmcompress import Prompt, create_compressor
from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.soft.base import left_pad
from mmcompress.soft.xrag import (
    MARKER,
    SLOT,
    XRAG,
    SentenceEncoder,
    distill_kl,
    markers,
    pad_rows,
    rag_user_message,
    tokenize_with_slots,
)
from mmcompress.soft.xrag_task import XRAGCollator, paraphrase_split, qa_split

SENTENCES = [
    "The quick brown fox jumps over the lazy dog",
    "A journey of a thousand miles begins with a single step",
    "Paris is the capital and most populous city of France",
    "Berlin is the capital of Germany",
    "The river flows to the sea",
    "Neural networks learn representations from data",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_xrag_dirs(tmp_path_factory):
    """A tiny BERT sentence encoder (WordPiece) and a tiny Llama reader whose logits depend on its input."""
    from tiny_models import make_bpe_tokenizer, make_wordpiece_tokenizer
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("xrag")
    bert, llm = root / "bert", root / "llm"
    wordpiece = make_wordpiece_tokenizer(bert)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(wordpiece), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(bert)
    bpe = make_bpe_tokenizer(llm)
    # a larger init than the default 0.02 so that the random reader's logits are not flat (and so can be steered)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(bpe), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=bpe.bos_token_id,
        eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id, tie_word_embeddings=True, initializer_range=0.3,
    )).save_pretrained(llm)
    return bert, llm


def _xrag(dirs, **kw) -> XRAG:
    bert, llm = dirs
    torch.manual_seed(0)
    return XRAG(model=str(llm), encoder=str(bert), device="cpu", dtype="float32", **kw)


@pytest.fixture(scope="module")
def tiny_xrag(tiny_xrag_dirs):
    return _xrag(tiny_xrag_dirs)


# ------------------------------------------------------------------------------------------------- encoder
def test_encoder_is_masked_mean_pooling_and_ignores_padding(tiny_xrag):
    encoder = tiny_xrag.module.encoder
    assert encoder.pooling == "mean" and not encoder.normalize  # a plain HF folder: sentence-transformers defaults
    short, long = SENTENCES[3], SENTENCES[1]
    batch, counts = encoder.tokenize_chunks([short, long])
    n = int(batch["attention_mask"][0].sum())
    assert counts == [1, 1] and n < batch["attention_mask"].shape[1]  # the short one is padded
    pooled = encoder(**batch)
    hidden = encoder.model(**batch).last_hidden_state
    assert torch.allclose(pooled[0], hidden[0, :n].mean(0), atol=1e-5)
    alone, _ = encoder.tokenize_chunks([short])
    assert torch.allclose(encoder(**alone)[0], pooled[0], atol=1e-5)  # padding in a batch changes nothing


def test_encoder_reads_sentence_transformers_settings(tiny_xrag_dirs, tmp_path):
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_xrag_dirs[0], folder)
    (folder / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"},
                                                     {"type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    encoder = SentenceEncoder(str(folder))
    assert encoder.pooling == "cls" and encoder.normalize
    batch, _ = encoder.tokenize_chunks(SENTENCES[:3])
    assert torch.allclose(encoder(**batch).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_long_documents_are_chunked_into_one_encoder_batch(tiny_xrag_dirs):
    xrag = _xrag(tiny_xrag_dirs, num_slots=2, chunk_tokens=16)
    long_doc = " ".join(SENTENCES * 2)
    soft = xrag.compress([SENTENCES[0], long_doc])
    first, second = soft.soft_segments(0)
    n_chunks = len(xrag.module.encoder.tokenize_chunks([long_doc])[0]["input_ids"])
    assert n_chunks > 2
    assert (first.chunks, first.num_tokens) == (1, 2)
    assert (second.chunks, second.num_tokens) == (n_chunks, 2 * n_chunks)
    capped = _xrag(tiny_xrag_dirs, num_slots=2, chunk_tokens=16, max_chunks=2).compress(long_doc)
    assert capped.soft_tokens == [4]


# ------------------------------------------------------------------------------------------------ projector
def test_only_the_projector_gets_gradients(tiny_xrag_dirs):
    xrag = _xrag(tiny_xrag_dirs)
    module = xrag.module.train()
    assert sorted(xrag.trainable_state_dict()) == ["projector.net.0.bias", "projector.net.0.weight",
                                                   "projector.net.2.bias", "projector.net.2.weight"]
    rows = [{"context": s, "question": "What is it about?", "answers": [s.split()[-1]]} for s in SENTENCES[:3]]
    module.objective.kl = 2.0
    batch = XRAGCollator(module, "qa", teacher=True)(rows)
    out = module.training_step(batch)
    assert out["kl"] > 0
    out["loss"].backward()
    for name, p in module.named_parameters():
        if name.startswith("projector."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert not module.llm.training and not module.encoder.training  # frozen parts keep dropout off


def test_projection_lands_at_the_placeholder_position(tiny_xrag):
    module = tiny_xrag.module
    soft = tiny_xrag.compress(SENTENCES[:2], question="Which city?")
    ids = module.prompt_ids(tiny_xrag.user_message(soft.items[0], "qa", None)[0], [1, 1])
    slots = [i for i, t in enumerate(ids) if t == SLOT]
    assert len(slots) == 2 and slots[1] > slots[0] + 1  # two documents, separated by text
    embeds = tiny_xrag.decoder_embeddings(soft.items[0], "qa", None)
    docs = [s.embeddings for s in soft.soft_segments(0)]
    assert torch.equal(embeds[slots[0]], docs[0][0]) and torch.equal(embeds[slots[1]], docs[1][0])
    token_embeds = module.llm.get_input_embeddings()(torch.tensor([max(t, 0) for t in ids]))
    others = [i for i in range(len(ids)) if i not in slots]
    assert torch.equal(embeds[others], token_embeds[others])
    # causality: a different document changes the reader's logits from its slot on, never before it
    changed = embeds.clone()
    changed[slots[1]] += 1.0
    with torch.no_grad():
        a = module.llm(inputs_embeds=embeds[None]).logits[0]
        b = module.llm(inputs_embeds=changed[None]).logits[0]
    assert torch.allclose(a[: slots[1]], b[: slots[1]], atol=1e-5)
    assert not torch.allclose(a[slots[1]:], b[slots[1]:], atol=1e-3)


def test_training_batch_places_labels_after_the_prompt(tiny_xrag):
    module = tiny_xrag.module
    batch = XRAGCollator(module, "paraphrase", fixed_instruction=True)(SENTENCES[:3])
    for row in range(3):
        labels = batch["labels"][row]
        first_label = int((labels != -100).nonzero()[0])
        last_slot = int(batch["slot_mask"][row].nonzero()[-1])
        assert last_slot < first_label  # the document's token comes before the text it must regenerate
        target = labels[labels != -100].tolist()
        assert target[-1] == module.tokenizer.eos_token_id
        assert module.tokenizer.decode(target[:-1]) == SENTENCES[row]
    assert batch["enc_input_ids"].shape[0] == 3


def test_teacher_and_student_label_the_same_answer_tokens(tiny_xrag):
    module = tiny_xrag.module
    rows = [{"context": SENTENCES[2], "question": "What is the capital of France?", "answers": ["Paris"]}]
    batch = XRAGCollator(module, "qa", teacher=True)(rows)
    student = batch["labels"][batch["labels"] != -100]
    teacher = batch["teacher_labels"][batch["teacher_labels"] != -100]
    assert torch.equal(student, teacher)
    assert batch["teacher_input_ids"].shape[1] > batch["input_ids"].shape[1]  # the teacher reads the full text
    assert SENTENCES[2] in module.tokenizer.decode(batch["teacher_input_ids"][0])


def test_distillation_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(5, 11)
    assert distill_kl(logits, logits).abs() < 1e-6
    assert distill_kl(logits, logits + torch.randn(5, 11)) > 0
    assert distill_kl(logits, torch.randn(5, 11), temperature=2.0, topk=3) > 0


def test_projector_learns_a_toy_mapping(tiny_xrag_dirs):
    """Paraphrase pretraining on six sentences: the projector alone (reader frozen) must cut the loss clearly."""
    xrag = _xrag(tiny_xrag_dirs, num_slots=4)
    module = xrag.module.train()
    llm_before = {n: p.clone() for n, p in module.llm.named_parameters()}
    batch = XRAGCollator(module, "paraphrase", fixed_instruction=True)(SENTENCES)
    optimizer = torch.optim.Adam(module.projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(120):
        out = module.training_step(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])
    assert all(torch.equal(p, llm_before[n]) for n, p in module.llm.named_parameters())


# ----------------------------------------------------------------------------------------------- generation
def test_batched_generate_equals_per_item_generate(tiny_xrag_dirs):
    xrag = _xrag(tiny_xrag_dirs)
    with torch.no_grad():  # a non-trivial projector, so that the documents matter
        for p in xrag.module.projector.parameters():
            p.mul_(8)
    prompts = [[SENTENCES[0]], [SENTENCES[1], SENTENCES[2]], [" ".join(SENTENCES)]]
    questions = ["Which animal?", "Where is Paris and what is the capital of Germany?", "What?"]
    soft = xrag.compress_batch(prompts)
    batched = xrag.generate(soft, questions, max_new_tokens=8)
    single = [xrag.generate(soft[i], questions[i], max_new_tokens=8)[0] for i in range(3)]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts lead to different answers, so the comparison means something
    # and the first-step logits of the left-padded batch match each prompt alone
    embeds = [xrag.decoder_embeddings(item, "qa", q) for item, q in zip(soft.items, questions)]
    inputs, mask = left_pad(embeds)
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        last = xrag.llm(inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        for i, e in enumerate(embeds):
            assert torch.allclose(last[i], xrag.llm(inputs_embeds=e[None]).logits[0, -1], atol=1e-4)


def test_generate_reads_the_soft_tokens(tiny_xrag_dirs):
    xrag = _xrag(tiny_xrag_dirs)
    with torch.no_grad():
        for p in xrag.module.projector.parameters():
            p.mul_(8)
    soft = xrag.compress_batch([[s] for s in SENTENCES])
    answers = xrag.generate(soft, "What is it about?", max_new_tokens=6)
    assert len(set(answers)) > 1  # same question, different documents -> different answers
    assert xrag.reconstruct(soft[0], max_new_tokens=4) != []


def test_save_load_round_trip_gives_identical_outputs(tiny_xrag_dirs, tmp_path):
    from safetensors.torch import load_file

    xrag = _xrag(tiny_xrag_dirs, num_slots=2)
    with torch.no_grad():
        for p in xrag.module.projector.parameters():
            p.add_(torch.randn_like(p))  # trained-looking weights, not the seeded init
    xrag.save_pretrained(tmp_path / "saved")
    assert sorted(load_file(str(tmp_path / "saved" / "trainable.safetensors"))) == sorted(xrag.trainable_state_dict())
    meta = json.loads((tmp_path / "saved" / "mmcompress_config.json").read_text())
    assert meta["compressor"] == "xrag" and meta["config"]["num_slots"] == 2
    loaded = create_compressor(tmp_path / "saved")
    assert isinstance(loaded, XRAG)
    a, b = xrag.compress(SENTENCES[:2]), loaded.compress(SENTENCES[:2])
    assert torch.equal(a.embeddings, b.embeddings)
    assert xrag.generate(a, "Which city?", max_new_tokens=6) == loaded.generate(b, "Which city?", max_new_tokens=6)
    with pytest.raises(ConfigError, match="does not match"):
        XRAG.from_pretrained(tmp_path / "saved", projector_hidden=16)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_gets_clear_errors(tiny_xrag):
    with pytest.raises(ConfigError, match="max_chunks"):
        XRAG(max_chunks=0)
    with pytest.raises(ConfigError, match="pooling"):
        SentenceEncoder(tiny_xrag.config.encoder, pooling="median")
    with pytest.raises(InvalidPromptError, match="markers"):
        tokenize_with_slots(tiny_xrag.tokenizer, f"a {MARKER} b", [1, 1])
    with pytest.raises(InvalidPromptError, match="empty"):
        tiny_xrag.compress("")
    with pytest.raises(ConfigError, match="fixed ratio"):
        tiny_xrag.compress("text", rate=0.5)


def test_prompt_helpers():
    assert markers(2) == f"{MARKER} {MARKER}"
    assert rag_user_message("Who?", "BG", None) == "Refer to the background document: BG\n\nWho?"
    rows = pad_rows([[5, SLOT, 6], [7]], pad_id=0, side="left")
    assert rows["input_ids"].tolist() == [[5, 0, 6], [0, 0, 7]]
    assert rows["slot_mask"].tolist() == [[False, True, False], [False, False, False]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# --------------------------------------------------------------------------------------------------- training
def test_train_recipe_runs_resumes_and_the_result_generates(tiny_xrag_dirs, tmp_path, capsys):
    from mmcompress.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(6)))
    bert, llm = tiny_xrag_dirs
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: xrag\n"
        f"model: {{model: {llm}, encoder: {bert}, device: cpu, dtype: float32}}\n"
        f"data: {{kind: paraphrase, path: {corpus}, passage_words: 12, eval_fraction: 0.2}}\n"
        "train: {max_steps: 4, batch_size: 4, lr: 0.01, save_every: 2, eval_every: 2, log_every: 1, progress: false}\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output-dir", str(out)]) == 0
    assert main(["train", "--config", str(recipe), "--output-dir", str(out), "--resume",
                 "--set", "train.max_steps=6"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("eval/nll" in r for r in log) and any("token_acc" in r for r in log)
    trained = create_compressor(out / "final")
    assert isinstance(trained, XRAG)
    answer = trained.generate(trained.compress(SENTENCES[0]), "What?", max_new_tokens=3)
    assert isinstance(answer[0], str)


def test_splits_hold_out_whole_documents_and_articles(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"doc{i} " + "word " * 30 for i in range(20)))
    train, held = paraphrase_split(corpus, passage_words=10, eval_fraction=0.25)
    held_docs = {p.split()[0] for p in held if p.startswith("doc")}
    assert len(held_docs) == 5 and not held_docs & {p.split()[0] for p in train if p.startswith("doc")}
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"title": f"t{i % 7}", "context": "c", "question": "q", "answers": ["a"]})
                            for i in range(70)))
    train_rows, held_rows = qa_split(qa, eval_rows=15)
    assert len(held_rows) >= 15 and not {r["title"] for r in held_rows} & {r["title"] for r in train_rows}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c"}))
    with pytest.raises(ConfigError, match="lacks"):
        qa_split(bad)


# -------------------------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_real_minilm_and_smollm2_compress_and_answer():
    xrag = XRAG(device="cpu", dtype="float32")
    encoder = xrag.module.encoder
    assert (encoder.pooling, encoder.normalize, encoder.dim, encoder.max_tokens) == ("mean", True, 384, 256)
    docs = ["Paris is the capital of France.", "The Eiffel Tower is in Paris, France.", "Photosynthesis feeds plants."]
    batch, _ = encoder.tokenize_chunks(docs)
    emb = encoder(**batch)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # a real sentence embedding: related sentences are closer
    soft = xrag.compress([docs[0]], question="What is the capital of France?")
    assert soft.soft_tokens == [1] and soft.embeddings.shape == (1, 1, 576)
    answer = xrag.generate(soft, max_new_tokens=8)[0]
    assert isinstance(answer, str) and answer


def test_shipped_recipes_chain_paraphrase_into_squad(tiny_xrag_dirs, tmp_path):
    """Both shipped recipes run as written (tiny models and data swapped in); stage 2 starts from stage 1."""
    from pathlib import Path

    from mmcompress.training import load_recipe, run_recipe

    bert, llm = tiny_xrag_dirs
    configs = Path(__file__).resolve().parent.parent / "mmcompress" / "configs" / "train"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(6)))
    squad = tmp_path / "squad.jsonl"
    squad.write_text("\n".join(json.dumps({"title": f"t{i % 3}", "context": s, "question": "What is it about?",
                                           "answers": [s.split()[-1]]}) for i, s in enumerate(SENTENCES)))
    small = {"model.model": str(llm), "model.encoder": str(bert), "model.dtype": "float32", "train.max_steps": 2,
             "train.batch_size": 2, "train.progress": False, "train.eval_batches": 1}
    stage1 = load_recipe(configs / "xrag-paraphrase.yaml", {**small, "data.path": str(corpus), "data.passage_words": 12,
                                                            "train.output_dir": str(tmp_path / "s1")})
    run_recipe(stage1)
    stage2 = load_recipe(configs / "xrag-squad.yaml", {**small, "data.path": str(squad), "data.eval_rows": 2,
                                                       "model.init_from": str(tmp_path / "s1" / "final"),
                                                       "train.lr": 0.0,  # so stage 2 must end where stage 1 did
                                                       "train.output_dir": str(tmp_path / "s2")})
    assert stage2["objective"]["kl"] > 0 and stage2["model"]["max_chunks"] == 1
    run_recipe(stage2)
    first = XRAG.from_pretrained(tmp_path / "s1" / "final").trainable_state_dict()
    second = XRAG.from_pretrained(tmp_path / "s2" / "final").trainable_state_dict()
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    log = [json.loads(line) for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert any("kl" in r for r in log)  # self-distillation ran


def test_full_text_context_uses_the_same_layout_as_soft_context(tiny_xrag):
    from mmcompress.prompt import Prompt, Role, TextSegment

    as_text = Prompt((TextSegment(SENTENCES[2], role=Role.CONTEXT, keep=True),
                      TextSegment("Which city?", role=Role.QUESTION)))
    soft = tiny_xrag.compress_batch([as_text, Prompt.from_documents([SENTENCES[2]], question="Which city?")])
    text_user, text_counts = tiny_xrag.user_message(soft.items[0], "qa", None)
    soft_user, soft_counts = tiny_xrag.user_message(soft.items[1], "qa", None)
    assert (text_counts, soft_counts) == ([], [1])
    assert text_user == rag_user_message("Which city?", SENTENCES[2])  # the benchmark's full-context prompt
    assert soft_user == rag_user_message("Which city?", MARKER)       # what the projector was trained on


def test_precomputed_embeddings_answer_like_the_documents(tiny_xrag_dirs):
    xrag = _xrag(tiny_xrag_dirs)
    with torch.no_grad():
        for p in xrag.module.projector.parameters():
            p.mul_(8)
    index = xrag.sentence_embeddings(SENTENCES)  # e.g. a retrieval index built once
    assert index.shape == (len(SENTENCES), xrag.module.encoder.dim)
    from_index = xrag.compress_embeddings([index[:2], index[3:4]], ["Which city?", "What?"])
    from_text = xrag.compress_batch([Prompt.from_documents(SENTENCES[:2], question="Which city?"),
                                     Prompt.from_documents(SENTENCES[3:4], question="What?")])
    assert torch.allclose(from_index.embeddings, from_text.embeddings, rtol=1e-4, atol=1e-4)  # other padding
    assert xrag.generate(from_index, max_new_tokens=6) == xrag.generate(from_text, max_new_tokens=6)
    with pytest.raises(InvalidPromptError, match="questions"):
        xrag.compress_embeddings([index[:1]], ["a", "b"])
