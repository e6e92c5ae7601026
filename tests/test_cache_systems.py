"""The QA harness's cache systems on tiny models: every family decodes from a measured KV cache, soft methods exactly
as their own ``generate()`` lays the prompt out, pipelines split the budget, and bad pairs are clear errors."""
from __future__ import annotations

import math

import pytest
import torch
from test_soft import FirstStepScores  # records the first generated position's scores
from tiny_models import perturb
from transformers import LogitsProcessorList

from mmcompress.errors import ConfigError, UnknownCompressorError
from mmcompress.evaluation.cache_systems import context_ids, question_ids, split_prompt
from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION, QAExample, evaluate
from mmcompress.evaluation.reader import Reader
from mmcompress.evaluation.systems import build_system
from mmcompress.prompt import Prompt

# long enough that a quarter of the prompt covers the kept instruction and question (and their separators)
DOCS = ["The Eiffel Tower was finished in 1889 and stands on the Champ de Mars in Paris, France. It was built as the "
        "entrance arch to the World's Fair and was the tallest structure in the world for four decades.",
        "Mount Everest is the highest mountain above sea level, on the border of Nepal and China. Climbers reach its "
        "summit from the south side in Nepal or from the north side in Tibet, mostly in May."]
EXAMPLE = QAExample(id="q1", question="When was the tower finished?", answers=["1889"], documents=DOCS)
SOFT = {"num_slots": 4, "chunk_tokens": 16, "device": "cpu", "dtype": "float32"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reader(tiny_lm):
    return Reader(model=tiny_lm[0], tokenizer=tiny_lm[1], max_new_tokens=3)


def soft_compressor(name, tiny_dir):
    from mmcompress import create_compressor

    torch.manual_seed(0)  # slots, gists and markers start random: the same seed gives the same (untrained) weights
    options = {"lora_r": 4} if name in ("icae", "kv") else {"num_slots": 3} if name == "gist" else {}
    compressor = create_compressor(name, model=str(tiny_dir), **{**SOFT, **options})
    perturb(compressor)  # LoRA B starts at zero: give the encoder something to do, as after training
    return compressor


def next_token_logits(system, example, rate):
    """The decoder's scores for the first answer token, read after the system's prepared context."""
    from mmcompress.models.decoding import cache_kwargs

    p = system.read(example, system.compress(example, rate), rate)
    ids = torch.tensor([p.question])
    mask = torch.cat([p.context.cache_mask, torch.ones_like(ids)], 1)
    positions = p.context.next_position[:, None] + torch.arange(ids.shape[1])[None]
    with torch.no_grad(), p.mode():
        out = p.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      **cache_kwargs(p.model, p.context.cache))
    return out.logits[0, -1]


@pytest.mark.parametrize("method", ["icae", "kv", "autocompressor"])
def test_soft_system_scores_like_the_methods_own_generate(tiny_dir, reader, monkeypatch, method):
    compressor = soft_compressor(method, tiny_dir)
    monkeypatch.setattr(reader, "template_parts", lambda: ("", ""))  # the method's own layout, no chat template
    system = build_system(method, reader, make=lambda name, rate=None: compressor)
    ours = next_token_logits(system, EXAMPLE, 0.25)
    assert compressor.config.chunk_tokens == round(compressor.config.num_slots / 0.25)
    # alone, the method compresses the documents as one span (as gist and autocompressor do)
    soft = compressor.compress(Prompt.from_documents(["\n\n".join(DOCS)], instruction=DEFAULT_INSTRUCTION,
                                                     question=EXAMPLE.question))
    assert len([s for s in soft.items[0] if hasattr(s, "num_tokens")]) == 1
    first = FirstStepScores()
    compressor.generate(soft, max_new_tokens=1, logits_processor=LogitsProcessorList([first]))
    torch.testing.assert_close(ours, first.scores[0], atol=2e-4, rtol=1e-4)
    out = system.run([EXAMPLE], 0.25)[0]
    # the cache holds the instruction, the soft tokens and (icae / kv) the marker: nothing of the documents' text
    instruction = len(reader.encode(DEFAULT_INSTRUCTION))
    marker = 0 if method == "autocompressor" else compressor.marker("qa").shape[0]  # kv's 500x default: none
    assert out.extras["kv_entries"] == instruction + out.extras["soft_tokens"] + marker
    assert out.compressed_tokens == out.extras["kv_entries"] + out.extras["question_tokens"]


def test_gist_system_answers_as_gists_own_generate(tiny_dir, reader, monkeypatch):
    gist = soft_compressor("gist", tiny_dir)
    monkeypatch.setattr(reader, "template_parts", lambda: ("", ""))
    system = build_system("gist", reader, make=lambda name, rate=None: gist)
    out = system.run([EXAMPLE], 0.25)[0]
    soft = gist.compress(Prompt.from_documents(["\n\n".join(DOCS)], instruction=DEFAULT_INSTRUCTION,
                                               question=EXAMPLE.question))
    texts, generation = gist.generate(soft, max_new_tokens=3, return_details=True)
    assert generation.new_tokens > 0 and out.answer == texts[0].strip()
    assert out.extras["kv_entries"] == len(reader.encode(DEFAULT_INSTRUCTION)) + out.extras["soft_tokens"]


def test_full_and_hard_systems_prefill_what_they_keep(reader, tiny_dir):
    from mmcompress import create_compressor

    context, question = split_prompt(reader, EXAMPLE, DEFAULT_INSTRUCTION)
    full = build_system("full", reader).run([EXAMPLE], 0.5)[0]
    assert full.extras["kv_entries"] == len(context) and full.extras["question_tokens"] == len(question)
    assert full.answer == reader.generate(input_ids=torch.tensor([context + question]))[0]  # one pass, same answer
    hard = create_compressor("random", model=str(tiny_dir))
    make = lambda name, rate=None: hard  # noqa: E731
    out = build_system("random", reader, through_cache=True, make=make).run([EXAMPLE], 0.5)[0]
    kept = hard.compress(EXAMPLE.prompt(), rate=0.5)
    docs = [s.text for s in kept.prompt.text_segments if s.role.value == "context" and s.text]
    assert out.extras["kv_entries"] == len(context_ids(reader, docs, DEFAULT_INSTRUCTION)) < len(context)
    assert out.context == "\n\n".join(docs)  # answer retention is measured on the kept text
    assert build_system("random", reader, make=make).name == "random"  # without through_cache: the text path
    pressed = build_system("random+snapkv", reader, through_cache=True, make=make).run([EXAMPLE], 0.25)[0]
    kept = hard.compress(EXAMPLE.prompt(), rate=math.sqrt(0.25))
    docs = [s.text for s in kept.prompt.text_segments if s.role.value == "context" and s.text]
    assert pressed.extras["kv_entries"] == round(0.5 * len(context_ids(reader, docs, DEFAULT_INSTRUCTION)))


def test_hard_soft_pipeline_splits_the_budget(tiny_dir, reader):
    from mmcompress import create_compressor

    icae = soft_compressor("icae", tiny_dir)
    hard = create_compressor("random", model=str(tiny_dir), rate=0.5)
    system = build_system("random+icae", reader, make=lambda name, rate=None: hard if rate == 0.5 else icae)
    assert system.family == "pipeline" and system.name == "random+icae"
    out = system.run([EXAMPLE], 0.25)[0]
    assert icae.config.chunk_tokens == 8  # the soft stage gets the rest of the budget: 0.25 / 0.5 -> 2x
    kept = [s.text for s in hard.compress(EXAMPLE.prompt()).prompt.segments if s.role.value == "context"]
    expected = sum(4 * -(-len(reader.encode(t)) // 8) for t in kept)  # one span per kept document
    assert out.extras["soft_tokens"] == expected
    assert out.extras["kv_entries"] == len(reader.encode(reader.template_parts()[0] + DEFAULT_INSTRUCTION)) + expected + 1
    report = evaluate([EXAMPLE], [system], [0.25], reader)
    assert report.results[0].system == "random+icae" and report.results[0].f1 is not None


@pytest.mark.parametrize("method, error, message", [
    ("random+nosuch", UnknownCompressorError, "nosuch"),
    ("random+llmlingua", ConfigError, "neither a KV press"),
    ("icae+snapkv", ConfigError, "not a hard method"),
    ("random+", ConfigError, "HARD\\+PRESS or HARD\\+SOFT"),
])
def test_bad_pairs_are_clear_errors(reader, tiny_dir, method, error, message):
    from mmcompress import create_compressor

    def make(name, rate=None):
        options = {"lora_r": 4, **SOFT} if name == "icae" else {}
        return create_compressor(name, model=str(tiny_dir), **options)

    with pytest.raises(error, match=message):
        build_system(method, reader, make=make)


def test_question_ids_follow_the_chat_template(reader):
    prefix, suffix = reader.template_parts()
    assert question_ids(reader, "Why?") == reader.encode("\n\n" + "Why?" + suffix)
    assert context_ids(reader, ["a", "b"], None) == reader.encode(prefix + "a\n\nb")


def test_the_cli_evaluates_full_and_pairs(capsys, tmp_path, tiny_dir):
    import json

    from mmcompress.cli import main

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": EXAMPLE.question, "answers": EXAMPLE.answers,
                                "documents": DOCS}) + "\n")
    argv = ["eval", "--data", str(data), "--rates", "0.5", "--reader", str(tiny_dir), "--model", str(tiny_dir),
            "--max-new-tokens", "2", "--no-random", "--out", str(tmp_path / "out")]
    assert main([*argv, "--method", "full,random+snapkv"]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    rates = {r["system"]: r["rate"] for r in result["results"]}
    assert set(rates) == {"full", "random+snapkv"} and rates["random+snapkv"] < rates["full"] == 1.0
    capsys.readouterr()
    assert main([*argv, "--method", "full", "--no-reader"]) == 2
    assert "needs a reader" in capsys.readouterr().err
