"""Question-focused mean-pooling (``question_focus``): the layout of the groups, the same position count as uniform
pooling, the same layout in training and at inference, and the errors. The sentence encoder is replaced by a
bag-of-words embedding so that the tests need no downloaded model."""
from __future__ import annotations

import math

import pytest
import torch

from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.soft.focus import QuestionFocus, allocate, choose_sentences, focused_groups, sentence_of_tokens
from mmcompress.soft.losses import QADataset
from mmcompress.soft.meanpool import MeanPoolCompressor

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = ("The river flows through the old town and past the market. Many boats sail there in summer. "
           "The cathedral was built by Bishop Walcher in 1072 near the castle. Tourists visit the castle each year "
           "and walk along the walls. The town has a famous football club and a large university.")
QUESTION = "Who built the cathedral near the castle?"


@pytest.fixture
def bag_of_words(monkeypatch):
    """Sentences ranked by the words they share with the question (lower-cased, punctuation stripped)."""
    def embed(self, texts):
        vocab = sorted(words(CONTEXT + " " + QUESTION + " What sails there?"))
        vectors = torch.tensor([[float(w in words(t)) for w in vocab] for t in texts])
        return torch.nn.functional.normalize(vectors, dim=-1)

    monkeypatch.setattr(QuestionFocus, "embed", embed)


def words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()} - {"the", "a", "and", "by", "in"}


def build(tiny_dir, **kw):
    fields = {"pool_ratio": 4, "chunk_tokens": 16, "lora_r": 4, "max_new_tokens": 4, "device": "cpu",
              "dtype": "float32"}
    return MeanPoolCompressor(model=str(tiny_dir), **{**fields, **kw})


def spy_layout(compressor) -> dict:
    """``seen["chunks"]``: the chunks of the compressor's last question-focused layout, with their groups."""
    seen, lay_out = {}, compressor.lay_out_focus

    def spy(texts, questions, chunks, offsets):
        lay_out(texts, questions, chunks, offsets)
        seen["chunks"] = chunks

    compressor.lay_out_focus = spy
    return seen


def test_focused_groups_spend_uniform_pooling_positions_unevenly():
    """Focused runs get groups of ``focus_ratio``; the other runs share what is left of uniform pooling's count in
    proportion to their lengths; groups are consecutive and never cross a chunk."""
    focus = [False] * 10 + [True] * 6 + [False] * 16  # chunks of 16: the focused run ends chunk 0
    groups = focused_groups(focus, [16, 16], pool_ratio=4, focus_ratio=1)
    assert sum(max(g) + 1 for g in groups) == 8  # = ceil(16/4) + ceil(16/4)
    assert groups[0][10:] == [groups[0][10] + k for k in range(6)]  # one position per focused token
    for g in groups:
        assert g[0] == 0 and all(b - a in (0, 1) for a, b in zip(g, g[1:]))
    rest = [groups[0][:10], groups[1]]
    assert [max(r) - min(r) + 1 for r in rest] == allocate(8 - 6, [10, 16])
    assert allocate(5, [10, 30]) == [1, 4] and allocate(3, [1, 1, 9]) == [1, 1, 1]
    assert allocate(4, [2, 2]) == [2, 2] and allocate(9, [2, 2]) == [2, 2]  # at most one position per token
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):  # random layouts: the count is uniform pooling's, and every group is used
        sizes = torch.randint(1, 40, (int(torch.randint(1, 4, (1,), generator=rng)),), generator=rng).tolist()
        start = int(torch.randint(0, sum(sizes), (1,), generator=rng))
        focus = [start <= i < start + 9 for i in range(sum(sizes))]
        ratio, fine = int(torch.randint(2, 6, (1,), generator=rng)), int(torch.randint(1, 3, (1,), generator=rng))
        groups = focused_groups(focus, sizes, pool_ratio=ratio, focus_ratio=fine)
        if groups is not None:
            assert sum(max(g) + 1 for g in groups) == sum(math.ceil(n / ratio) for n in sizes)
            assert all(sorted(set(g)) == list(range(max(g) + 1)) for g in groups)
    # too many runs for the positions left: the caller pools uniformly
    assert focused_groups([False, True] * 8, [16], pool_ratio=4, focus_ratio=1) is None


def test_choose_sentences_takes_the_best_that_fit_and_coarsens_when_none_fits():
    chosen, ratio = choose_sentences([0.1, 0.9, 0.5], [10, 8, 6], positions=10, share=0.8, focus_ratio=1, pool_ratio=4)
    assert (chosen, ratio) == ({1}, 1)  # the best (8 positions) fits in 8; the next would not
    chosen, ratio = choose_sentences([0.1, 0.9], [10, 20], positions=10, share=0.8, focus_ratio=1, pool_ratio=4)
    assert (chosen, ratio) == ({1}, 3)  # 20 tokens fit in 8 positions only 3 to a position
    assert choose_sentences([1.0], [40], positions=10, share=0.5, focus_ratio=1, pool_ratio=4) == (set(), 4)


def test_question_focus_keeps_the_ratio_and_pools_the_question_sentence_finer(tiny_dir, bag_of_words):
    uniform = build(tiny_dir)
    focused = build(tiny_dir, question_focus=0.5)
    seen = spy_layout(focused)
    focused.module.load_state_dict(uniform.module.state_dict())
    soft_u = uniform.compress(CONTEXT, question=QUESTION)
    soft_f = focused.compress(CONTEXT, question=QUESTION)
    seg_u, seg_f = (next(p for p in s.items[0] if hasattr(p, "kv")) for s in (soft_u, soft_f))
    assert seg_f.kv[0][0].shape == seg_u.kv[0][0].shape  # the same number of positions
    assert soft_f.ratio == soft_u.ratio
    assert [c for _, c in seg_f.chunk_layout] != [c for _, c in seg_u.chunk_layout]  # spent unevenly
    assert not torch.allclose(seg_f.kv[0][0], seg_u.kv[0][0])
    # the tokens of the cathedral sentence (the question's words) are pooled finer than the rest
    chunks = seen["chunks"]
    tok = focused.tokenizer
    enc = tok(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)
    sentence = sentence_of_tokens(CONTEXT, enc["offset_mapping"])
    own = chunks.own_mask.bool()
    groups = torch.cat([row[m] + 1000 * n for n, (row, m) in enumerate(zip(chunks.groups, own))]).tolist()
    sizes = {g: groups.count(g) for g in groups}
    best = [i for i, s in enumerate(sentence) if s == 2]
    assert "cathedral" in tok.decode([enc["input_ids"][i] for i in best])
    # 42 tokens do not fit one to a position in half of the 42 positions: two to a position (the finest that fits)
    assert len(best) == 42 and sum(math.ceil(n / 4) for n in chunks.own_mask.sum(1).tolist()) == 42
    assert {sizes[groups[i]] for i in best} == {2}
    assert max(sizes[groups[i]] for i, s in enumerate(sentence) if s != 2) > 4  # the rest is pooled coarser
    focused.generate(soft_f)  # the decoder reads it
    # no question, nothing to focus on: uniform pooling (a question-aware encoder refuses instead)
    plain_u, plain_f = (next(p for p in c.compress(CONTEXT).items[0] if hasattr(p, "kv")) for c in (uniform, focused))
    assert plain_f.chunk_layout == plain_u.chunk_layout and torch.equal(plain_f.kv[0][0], plain_u.kv[0][0])
    with pytest.raises(InvalidPromptError, match="question"):
        build(tiny_dir, question_aware=True).compress(CONTEXT)


@pytest.mark.parametrize("encoder_bos", [False, True])
def test_the_layout_reads_offsets_from_the_encoders_own_tokenizer_call(tiny_dir, encoder_bos):
    """The focus layout gets one character span per encoder id, from the call that gave the ids (a BOS at (0, 0),
    pooled with the first sentence): the same ids as without offsets, and spans that cover the text in order."""
    c = build(tiny_dir, question_focus=0.5, encoder_bos=encoder_bos)
    ids, offsets = c.tokenize_spans([CONTEXT, QUESTION], offsets=True)
    assert ids == c.tokenize_spans([CONTEXT, QUESTION])
    assert [len(row) for row in offsets] == [len(row) for row in ids]
    for text, row, spans in zip([CONTEXT, QUESTION], ids, offsets):
        own = spans[1:] if encoder_bos else spans
        if encoder_bos:
            assert row[0] == c.tokenizer.bos_token_id is not None and spans[0] == (0, 0)
        assert own[0][0] == 0 and own[-1][1] == len(text) and all(a[1] <= b[0] for a, b in zip(own, own[1:]))


def test_training_lays_out_a_qa_example_as_inference_does(tiny_dir, bag_of_words):
    c = build(tiny_dir, question_focus=0.5, focus_ratio=2)
    from mmcompress.soft.losses import CHAT_QA_TEMPLATE

    rows = [{"context": CONTEXT, "question": QUESTION, "answers": ["Bishop Walcher"]},
            {"context": CONTEXT[:120], "question": "What sails there?", "answers": ["boats"]}]
    data = QADataset(rows, c.tokenizer, 512, CHAT_QA_TEMPLATE, c.question_focus_of())
    assert data[0].focus is not None and data[0].focus_ratio == 2
    batch = c.training_collate()([data[0], data[1]])
    seen = spy_layout(c)
    c.compress(CONTEXT, question=QUESTION)
    inference = seen["chunks"]
    rows0 = batch["chunk_span"] == 0
    train_groups = [g[m.bool()].tolist() for g, m in zip(batch["chunk_groups"][rows0], batch["chunk_mask"][rows0])]
    infer_groups = [g[m.bool()].tolist() for g, m in zip(inference.groups, inference.own_mask)]
    assert train_groups == infer_groups
    out = c.module(**batch)
    out["loss"].backward()  # the focused layout trains like the uniform one
    assert torch.isfinite(out["loss"])
    assert build(tiny_dir).question_focus_of() is None  # off: QA examples pool uniformly


def test_bad_question_focus_settings_are_refused(tiny_dir):
    for bad in ({"question_focus": 1.0}, {"question_focus": -0.1}, {"question_focus": True},
                {"question_focus": 0.5, "focus_ratio": 0}, {"question_focus": 0.5, "focus_ratio": 5}):
        with pytest.raises(ConfigError, match="question_focus|focus_ratio"):
            build(tiny_dir, **bad)
    assert math.isclose(build(tiny_dir, question_focus=0.25).config.question_focus, 0.25)


def test_the_shipped_qa_recipe_runs_every_stage_from_a_shipped_name(tiny_dir, tmp_path, monkeypatch, bag_of_words):
    """``soft-smollm2-4x-qa`` as shipped, one step per stage on a tiny Llama: the first stage starts from a shipped
    trained compressor by name (here a tiny stand-in for ``soft-smollm2-4x``, r16 encoder LoRA cut to the recipe's
    r8), the QA stages lay out their contexts with question_focus, and the result keeps it."""
    import json

    import mmcompress.factory as factory
    from mmcompress import create_compressor
    from mmcompress.training.tasks import load_recipe, run_stages
    from tiny_models import CORPUS

    shipped = tmp_path / "trained"
    build(tiny_dir, lora_r=16, lora_alpha=16, decoder_lora_r=8).save_pretrained(shipped / "soft-smollm2-4x")
    monkeypatch.setattr(factory, "TRAINED_DIR", shipped)
    text, squad = tmp_path / "corpus.txt", tmp_path / "squad.jsonl"
    text.write_text("\n\n".join([CORPUS] * 6))
    squad.write_text("".join(json.dumps({"context": CONTEXT, "question": QUESTION, "answers": [answer]}) + "\n"
                             for answer in ("Bishop Walcher", "Walcher", "in 1072", "Bishop", "1072")))
    probe = load_recipe("soft-smollm2-4x-qa")
    overrides = {"model.model": str(tiny_dir), "model.dtype": "float32", "data.text": str(text),
                 "data.eval_fraction": 0.34, "data.eval_split": "all", "data.context_tokens": 16,
                 "data.span_tokens": [32],
                 "data.eval_examples": 2, "train.output_dir": str(tmp_path / "run"), "train.save_every": 0,
                 "train.eval_batches": 1, "train.progress": False, "train.compile": "no"}  # int8 stays on
    for i, stage in enumerate(probe["stages"]):
        overrides[f"stages.{i}.train.max_steps"] = 1
        if "qa" in stage.get("data", {}):
            overrides.update({f"stages.{i}.data.qa": str(squad), f"stages.{i}.data.qa_eval_fraction": 0.2})
    run_stages(load_recipe("soft-smollm2-4x-qa", overrides))
    final = create_compressor(tmp_path / "run" / "final")
    assert (final.config.lora_r, final.config.decoder_lora_r, final.config.question_focus) == (8, 8, 0.75)
    assert final.config.qa_template.startswith("<|im_start|>user")
    assert len(final.generate(final.compress(CONTEXT, question=QUESTION))) == 1
    with pytest.raises(ConfigError, match="neither a shipped trained compressor"):
        run_stages(load_recipe("soft-smollm2-4x-qa", {**overrides, "init_from": "soft-smollm2-9x",
                                                      "train.output_dir": str(tmp_path / "run2")}))
