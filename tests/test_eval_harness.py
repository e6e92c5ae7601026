"""The QA evaluation harness: metrics on hand-made examples, outputs written, reader batching, CLI errors."""
from __future__ import annotations

import json

import pytest

from mmcompress.cli import main
from mmcompress.evaluation import (
    HardCompressorSystem,
    PrecomputedSystem,
    QAExample,
    Reader,
    SystemOutput,
    build_system,
    evaluate,
    load_qa_file,
)
from mmcompress.evaluation.harness import context_text

DOCS = ["Paris is the capital and most populous city of France. The river flows to the sea. A journey of a thousand "
        "miles begins with a single step. The quick brown fox jumps over the lazy dog.",
        "Berlin is the capital of Germany. Photosynthesis converts light energy into chemical energy that can later "
        "be released to fuel the organism. Neural networks learn representations from data."]
EXAMPLES = [
    QAExample("a", "What is the capital of France?", ["Paris"], DOCS, 0),
    QAExample("b", "What is the capital of Germany?", ["Berlin"], DOCS, 1),
]

pytestmark = pytest.mark.usefixtures("one_thread")



class ScriptedReader:
    """Answers from a table, so the harness arithmetic can be checked exactly."""

    name = "scripted"

    def __init__(self, table):
        self.table = table
        self.calls = []

    def answer(self, texts, progress=False):
        self.calls.append(list(texts))
        return [next((a for k, a in self.table.items() if k in t), "no idea") for t in texts]


def test_metrics_on_hand_made_example(tiny_dir):
    from mmcompress.models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    # "a" keeps its answer; "b" loses "Berlin" from the context (the question still says Germany)
    texts = {"a": "Paris is the capital city of France.\n\nWhat is the capital of France?",
             "b": "is the capital of Germany.\n\nWhat is the capital of Germany?"}
    reader = ScriptedReader({"Paris is the capital city": "Paris", "Berlin is": "Berlin", "is the capital of Ger": "Bonn",
                             "Paris is the capital and": "the Paris"})
    system = PrecomputedSystem("peer", texts, tok, reader, instruction=None)
    report = evaluate(EXAMPLES, [system], [0.5], reader, instruction=None)
    (res,) = report.results
    assert res.retention == pytest.approx(0.5)  # Berlin gone from b's context
    assert res.em == pytest.approx(0.5) and res.contains == pytest.approx(0.5)
    assert res.f1 == pytest.approx(0.5)
    n0 = sum(len(tok(ex.prompt(None).text, add_special_tokens=False)["input_ids"]) for ex in EXAMPLES)
    n1 = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts.values())
    assert res.rate == pytest.approx(n1 / n0) and res.ratio == pytest.approx(n0 / n1)
    # the original prompt: both contexts hold their answer; the reader says "the Paris" (EM after normalising)
    assert report.original["retention"] == 1.0
    assert report.original["em"] == pytest.approx(0.5)  # "the Paris" == "Paris"; b's answer is "no idea"


def test_retention_ignores_the_question():
    ex = QAExample("q", "When did the 1973 oil crisis begin?", ["1973"], ["The crisis began in October."])
    prompt = ex.prompt()
    assert "1973" in prompt.text and "1973" not in context_text(prompt)
    report = evaluate([ex], [], [0.5], None)
    assert report.original["retention"] == 0.0


def test_hard_system_outputs_json_md_png(tmp_path, tiny_dir):
    from mmcompress.factory import create_compressor

    reader = ScriptedReader({"Paris": "Paris"})
    systems = [HardCompressorSystem(create_compressor("random", model=str(tiny_dir)), reader),
               HardCompressorSystem(create_compressor("truncate", model=str(tiny_dir)), reader)]
    report = evaluate(EXAMPLES, systems, [0.8, 0.4], reader)
    assert [(r.system, r.requested_rate) for r in report.results] == [
        ("random", 0.8), ("random", 0.4), ("truncate", 0.8), ("truncate", 0.4)]
    for r in report.results:
        assert r.n == 2 and r.latency_s >= 0
        assert r.rate < 1.0 and r.ratio == pytest.approx(1 / r.rate)
    # lower rate, fewer tokens kept
    assert report.results[1].rate < report.results[0].rate
    # the reader saw the compressed prompts (instruction and question verbatim)
    assert all("What is the capital of" in t for call in reader.calls[1:] for t in call)
    paths = report.write(tmp_path, "run")
    data = json.loads(paths["json"].read_text())
    assert data["n_examples"] == 2 and len(data["results"]) == 4
    assert paths["md"].read_text().count("| random |") == 2
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000
    rows = [json.loads(x) for x in paths["rows"].read_text().splitlines()]
    assert len(rows) == 2 + 8 and {r["system"] for r in rows} == {"original", "random", "truncate"}


def test_reader_batched_equals_one_by_one_and_hooks(tiny_dir):
    import torch

    reader = Reader(model=str(tiny_dir), max_new_tokens=6, batch_size=3, device="cpu", dtype="float32")
    texts = ["Paris is the capital of France.", "Berlin", "The quick brown fox jumps over the lazy dog. What?"]
    batched = reader.answer(texts)
    single = [reader.answer([t])[0] for t in texts]
    assert batched == single
    # the embeddings hook gives the same answers as the ids it was built from
    ids = [reader.encode(reader.chat_text(t)) for t in texts]
    assert reader.answer_embeds([reader.embed(i) for i in ids]) == single
    # a prepared KV cache of the prompt minus its last token, then that token: same answer
    from mmcompress.models.compat import cache_kwargs, output_cache

    full = torch.tensor([ids[0]])
    with torch.no_grad():
        out = reader.model(input_ids=full[:, :-1], use_cache=True, **cache_kwargs(reader.model, None))
    assert reader.generate(input_ids=full[:, -1:], cache=output_cache(out)) == [single[0]]


def test_reader_cuts_the_middle_of_long_prompts(tiny_dir):
    reader = Reader(model=str(tiny_dir), max_new_tokens=4, device="cpu", dtype="float32")
    assert reader.max_input_tokens == 128 - 4
    ids = list(range(300))
    fitted = reader._fit(ids)
    assert len(fitted) == 124 and fitted[:62] == ids[:62] and fitted[-62:] == ids[-62:]
    assert isinstance(reader.answer(["word " * 400])[0], str)  # longer than the window: still answers


def test_load_qa_file_formats_and_errors(tmp_path):
    from mmcompress.errors import InputFileError

    path = tmp_path / "qa.jsonl"
    rows = [{"id": "1", "question": "q?", "answers": ["x"], "documents": ["d1", "d2"], "gold_index": 1},
            {"id": "2", "question": "q?", "answers": ["x"], "context": "c"},
            {"id": "3", "question": "q?", "answers": "x", "document": "d"}]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    exs = load_qa_file(path)
    assert [len(e.documents) for e in exs] == [2, 1, 1] and exs[2].answers == ["x"] and exs[0].gold_index == 1
    assert len(load_qa_file(path, limit=2)) == 2
    for bad, msg in [("{not json", "not valid JSON"), (json.dumps({"question": "q", "answers": ["a"]}), "documents"),
                     (json.dumps({"question": "q", "answers": [], "context": "c"}), "non-empty list"),
                     (json.dumps({"answers": ["a"], "context": "c"}), "'question'")]:
        path.write_text(bad + "\n")
        with pytest.raises(InputFileError, match=msg):
            load_qa_file(path)


def test_build_system_unknown_method_is_a_clear_error():
    from mmcompress.errors import UnknownCompressorError

    with pytest.raises(UnknownCompressorError, match="no_such_method"):
        build_system("no_such_method", None)


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.jsonl", "--method", "random"], "data file not found"),
    (["--method", "random", "--rates", "0.5,1.5"], "rate must be"),
    (["--method", "random", "--rates", "half"], "comma-separated numbers"),
    (["--method", "nope", "--no-reader"], "unknown compressor 'nope'"),
    (["--method", "random", "--limit", "0"], "--limit"),
])
def test_cli_eval_bad_input_exit_code_2(capsys, tmp_path, argv, message):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "1", "question": "q?", "answers": ["x"], "context": "some text here"}) + "\n")
    if "--data" not in argv:
        argv = ["--data", str(data), *argv]
    code = main(["eval", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_eval_writes_outputs(capsys, tmp_path, tiny_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"id": e.id, "question": e.question, "answers": e.answers,
                                          "documents": e.documents}) for e in EXAMPLES) + "\n")
    code = main(["eval", "--data", str(data), "--method", "truncate", "--rates", "0.7,0.4", "--no-reader",
                 "--model", str(tiny_dir), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert {r["system"] for r in result["results"]} == {"truncate", "random"}  # the random floor is added
    assert all(r["em"] is None for r in result["results"]) and (tmp_path / "out" / "eval.png").exists()


def test_hard_system_reuses_compressions_across_runs(tiny_dir):
    from mmcompress.factory import create_compressor

    compressor = create_compressor("random", model=str(tiny_dir))
    calls = []
    original = compressor.compress_batch
    compressor.compress_batch = lambda prompts, **kw: calls.append(len(prompts)) or original(prompts, **kw)
    system = HardCompressorSystem(compressor, None)
    first = system.run(EXAMPLES, 0.5)
    system.reader = ScriptedReader({"capital of France?": "Paris"})
    second = system.run(EXAMPLES[:1], 0.5)
    assert calls == [2] and second[0].prompt == first[0].prompt and second[0].answer == "Paris"
    assert first[0].answer is None  # the earlier outputs are not changed by the later reading


def test_cli_eval_set_reaches_the_methods_and_the_floor_takes_only_its_own_fields(capsys, tmp_path, tiny_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"id": e.id, "question": e.question, "answers": e.answers,
                                          "documents": e.documents}) for e in EXAMPLES) + "\n")
    argv = ["eval", "--data", str(data), "--method", "llmlingua", "--rates", "0.5", "--no-reader",
            "--model", str(tiny_dir), "--out", str(tmp_path / "out")]
    # alignment is an llmlingua knob the random floor does not have: it used to stop the run
    assert main([*argv, "--set", "alignment=token", "--set", "iterative_size=24"]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert {r["system"] for r in result["results"]} == {"llmlingua", "random"}
    capsys.readouterr()
    assert main([*argv, "--set", "alignment=sideways"]) == 2  # the named method still checks its values
    assert "alignment must be" in capsys.readouterr().err


def test_random_floors_match_the_granularity_of_the_methods_compared(tiny_dir):
    import re
    from types import SimpleNamespace

    from mmcompress import create_compressor
    from mmcompress.evaluation.harness import random_floors
    from mmcompress.hard.llmlingua2 import LLMLingua2

    assert LLMLingua2.selection_unit == "word"  # LLMLingua-2 keeps whole words
    assert create_compressor("selective_context", unit="sentence", model=str(tiny_dir)).selection_unit == "sentence"
    systems = [SimpleNamespace(compressor=SimpleNamespace(selection_unit="word")),
               HardCompressorSystem(create_compressor("truncate", model=str(tiny_dir)), None)]
    floors = random_floors(systems, None, model=str(tiny_dir))
    assert [f.name for f in floors] == ["random", "random_word"]
    assert [f.compressor.config.unit for f in floors] == ["token", "word"]
    # the word floor drops whole words: every kept piece is a word of the original
    text = "Photosynthesis converts light energy into chemical energy that fuels the organism later."
    kept = floors[1].compressor.compress(text, rate=0.5).text
    words = lambda s: set(re.findall(r"\w+|[^\w\s]", s))  # noqa: E731
    assert words(kept) <= words(text)
    assert random_floors([], None, model=str(tiny_dir))[0].name == "random"  # soft systems only: token level
