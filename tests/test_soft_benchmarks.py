"""The soft benchmark scripts' own logic, end to end on a tiny saved compressor."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import soft_answer_survival  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_answer_kinds_split_numbers_names_and_the_rest():
    kinds = [soft_answer_survival.answer_kind(a) for a in ("1835", "7.8%", "Grainger Town", "the Town Moor", "a pub")]
    assert kinds == ["number", "number", "name", "name", "other"]


def test_answer_survival_reads_the_chosen_rows_and_scores_their_regenerated_contexts(tiny_dir, tmp_path,
                                                                                     monkeypatch):
    from mmcompress.soft.meanpool import MeanPoolCompressor

    MeanPoolCompressor(model=str(tiny_dir), pool_ratio=4, chunk_tokens=16, lora_r=4, device="cpu",
                       dtype="float32").save_pretrained(tmp_path / "c")
    answers = ["1835", "Grainger Town", "a pub"]
    rows = [{"context": f"Row {i}: the answer is {answers[i % 3]} and nothing else.", "question": f"q{i}?",
             "answers": [answers[i % 3]]} for i in range(40)]
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "survival"
    for split, expected_rows in (("train", 6), ("validation", 2)):  # 40 rows: 36 train, held-out 4 = 2 + 2
        monkeypatch.setattr(sys, "argv", ["soft_answer_survival.py", "--compressor", str(tmp_path / "c"), "--data",
                                          str(data), "--split", split, "--limit", "6", "--threads", "1",
                                          "--batch-size", "4", "--out", str(out)])
        soft_answer_survival.main()
        row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
        assert row["rows"] == expected_rows and row["answer_in_context"] == 1.0
        assert len(row["hits"]) == expected_rows and row["answer_survives"] == sum(row["hits"]) / expected_rows
        assert row["answer_survives"] < 1.0  # scored on what the untrained tiny model regenerates, not the context
    # validation rows are 36 and 37: a number and a name
    assert (row["rows_number"], row["rows_name"], row["rows_other"]) == (1, 1, 0)
    # a second compressor is paired with the first, row by row (the same one twice: nothing won or lost)
    monkeypatch.setattr(sys, "argv", sys.argv[:3] + ["--compressor", str(tmp_path / "c")] + sys.argv[3:])
    soft_answer_survival.main()
    first, second = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert "won_vs_first" not in first and second["hits"] == first["hits"]
    assert (second["won_vs_first"], second["lost_vs_first"], second["mcnemar_p"]) == (0, 0, 1.0)


def test_soft_squad_reads_settings_after_the_compressor_and_each_ones_own_full_context(tiny_dir, tmp_path,
                                                                                       monkeypatch):
    """``--compressor NAME,setting=value`` builds the compressor with those settings (here question-focused pooling
    next to uniform pooling); ``--own-baselines`` reads the full context and no context once per reader (name and
    template), and each soft row is reported against its own reader's baselines as well as the first one's."""
    import soft_squad

    from mmcompress.soft.focus import QuestionFocus
    from mmcompress.soft.meanpool import MeanPoolCompressor

    MeanPoolCompressor(model=str(tiny_dir), pool_ratio=4, chunk_tokens=16, lora_r=4, device="cpu",
                       dtype="float32", max_new_tokens=3).save_pretrained(tmp_path / "c")
    monkeypatch.setattr(QuestionFocus, "embed", lambda self, texts: torch.ones(len(texts), 2))  # no sentence model
    rows = [{"context": f"Row {i} is here. The answer is blue {i}. Nothing else is said about it.",
             "question": f"What is the answer of row {i}?", "answers": [f"blue {i}"]} for i in range(40)]
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "squad"
    c = str(tmp_path / "c")
    monkeypatch.setattr(sys, "argv", ["soft_squad.py", "--compressor", c, "--compressor", f"{c},question_focus=0.5",
                                      "--compressor", f"{c},qa_template=chatml", "--own-baselines",
                                      "--data", str(data), "--split", "validation", "--threads", "1",
                                      "--batch-size", "4", "--out", str(out)])
    import mmcompress

    seen, create = [], mmcompress.create_compressor  # the settings each compressor is built with

    def spy(name, **settings):
        seen.append(settings)
        return create(name, **settings)

    monkeypatch.setattr(mmcompress, "create_compressor", spy)
    soft_squad.main()
    assert [s.get("question_focus") for s in seen] == [None, 0.5, None]
    result = [r["condition"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]]
    assert result == ["no context", "full context", c, f"{c},question_focus=0.5",
                      f"no context, {c} reader", f"full context, {c} reader", f"{c},qa_template=chatml"]
    by = {r["condition"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert by[f"{c},question_focus=0.5"]["ratio"] == by[c]["ratio"]  # the same positions, spent unevenly
    chat = by[f"{c},qa_template=chatml"]
    own = by[f"full context, {c} reader"]
    if own["f1"]:
        assert chat["f1_of_own_full"] == chat["f1"] / own["f1"]
    own_none = by[f"no context, {c} reader"]
    assert chat["won_vs_own_no_context"] == sum(a and not b for a, b in zip(chat["hits"], own_none["hits"]))
    monkeypatch.setattr(sys, "argv", ["soft_squad.py", "--compressor", f"{c},question_focus", "--data", str(data)])
    with pytest.raises(SystemExit, match="error: a compressor setting must be name=value"):
        soft_squad.main()


def train_tiny_staged_recipe(tiny_dir: Path, folder: Path, runs: tuple[str, ...]) -> None:
    """Train a two-stage meanpool recipe (2 + 3 steps) on the tiny model once per name in ``runs``:
    ``folder/<run>.yaml`` into ``folder/<run>/``."""
    import yaml

    from mmcompress.cli import main
    from tiny_models import CORPUS

    text = folder / "corpus.txt"
    text.write_text("\n\n".join([CORPUS] * 6))
    recipe = {"task": "meanpool",
              "model": {"model": str(tiny_dir), "pool_ratio": 4, "chunk_tokens": 16, "lora_r": 4, "device": "cpu",
                        "dtype": "float32"},
              "data": {"text": str(text), "eval_fraction": 0.34, "context_tokens": 16, "eval_examples": 2},
              "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "save_every": 0, "log_every": 1,
                        "eval_every": 0, "progress": False},
              "stages": [{"name": "one"}, {"name": "two", "train": {"max_steps": 3}}]}
    for run in runs:
        recipe["train"]["output_dir"] = str(folder / run)
        (folder / f"{run}.yaml").write_text(yaml.safe_dump(recipe))
        assert main(["train", "--config", str(folder / f"{run}.yaml")]) == 0


def test_recipe_reproduction_compares_each_stages_log_and_the_trained_tensors(tiny_dir, tmp_path, monkeypatch):
    """Two runs of the same staged recipe give identical logs and tensors; a perturbed tensor and a changed loss are
    counted as such."""
    import recipe_reproduction

    train_tiny_staged_recipe(tiny_dir, tmp_path, ("a", "b"))
    logs = [str(tmp_path / "b" / f"{i}-{n}" / "log.jsonl") for i, n in ((1, "one"), (2, "two"))]
    out = tmp_path / "repro"

    def compare() -> list[dict]:
        argv = ["recipe_reproduction.py", "--recipe", str(tmp_path / "a.yaml"), "--result", str(tmp_path / "a" / "final"),
                "--reference", str(tmp_path / "b" / "final"), *[a for log in logs for a in ("--reference-log", log)],
                "--out", str(out)]
        monkeypatch.setattr(sys, "argv", argv)
        recipe_reproduction.main()
        return json.loads(out.with_suffix(".json").read_text())["rows"]

    rows = compare()
    assert [(r["compared"], r["identical"]) for r in rows[:2]] == [(2, 2), (3, 3)]
    assert rows[2]["identical"] == rows[2]["compared"] > 0 and rows[2]["max_abs_difference"] == 0
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "b" / "final" / "trainable.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1e-3
    save_file(tensors, str(weights))
    second = Path(logs[1])
    lines = [json.loads(line) for line in second.read_text().splitlines()]
    lines[0]["loss"] += 0.5
    second.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = compare()
    assert rows[1]["identical"] == 2 and rows[1]["max_abs_difference"] == pytest.approx(0.5)
    assert rows[2]["identical"] == rows[2]["compared"] - 1 and rows[2]["max_abs_difference"] == pytest.approx(1e-3, rel=1e-2)


def test_recipe_wall_clock_sums_each_stage_and_copies_its_logs(tiny_dir, tmp_path, monkeypatch):
    """Per stage: its steps, the training minutes summed from the logged steps per second, the stage's whole wall
    clock from the trainer's start stamp to the saved result; the total over stages; the logs copied beside the
    results. A stage resumed in pieces has no whole wall clock (its gaps are not training), nor has the total. A run
    written to another folder (``mmcompress train --output``) is read from there with ``--output``."""
    import recipe_wall_clock

    train_tiny_staged_recipe(tiny_dir, tmp_path, ("a",))
    out = tmp_path / "results" / "tiny_recipe"
    out.parent.mkdir()
    first = tmp_path / "a" / "1-one" / "log.jsonl"  # as if each of its 2 steps had taken 100 s
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    first.write_text("".join(json.dumps({**r, "steps_per_s": 0.01} if "steps_per_s" in r else r) + "\n" for r in rows))

    def measure(*extra: str) -> list[dict]:
        monkeypatch.setattr(sys, "argv", ["recipe_wall_clock.py", "--recipe", str(tmp_path / "a.yaml"),
                                          "--out", str(out), *extra])
        recipe_wall_clock.main()
        return json.loads(out.with_suffix(".json").read_text())["rows"]

    rows = measure()
    assert [(r["stage"], r["steps"]) for r in rows] == [("one", 2), ("two", 3), ("all", 5)]
    assert rows[0]["train_wall_minutes"] == 3.3
    assert rows[2]["train_wall_minutes"] == pytest.approx(3.3 + rows[1]["train_wall_minutes"])
    for stage, row in zip(("1-one", "2-two"), rows):
        logged = [json.loads(line) for line in (tmp_path / "a" / stage / "log.jsonl").read_text().splitlines()]
        speeds = [r["steps_per_s"] for r in logged if "steps_per_s" in r]  # log_every 1: one row per step
        assert row["train_wall_minutes"] == round(sum(1 / v for v in speeds) / 60, 1)
        assert 0 <= row["stage_wall_minutes"] < 5 and "cores" in row["machine"]
        copy = out.with_name(f"tiny_recipe_{stage[2:]}_train_log.jsonl")
        assert copy.read_text() == (tmp_path / "a" / stage / "log.jsonl").read_text()
        assert out.with_name(f"tiny_recipe_{stage[2:]}_machines.jsonl").is_file()
    assert rows[2]["stage_wall_minutes"] >= max(r["stage_wall_minutes"] for r in rows[:2])

    machines = tmp_path / "a" / "2-two" / "machines.jsonl"
    machines.write_text(machines.read_text() * 2)  # as after one --resume
    rows = measure()
    assert rows[1]["stage_wall_minutes"] is None and rows[2]["stage_wall_minutes"] is None
    assert rows[0]["stage_wall_minutes"] is not None

    (tmp_path / "a").rename(tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="not found"):
        measure()
    assert measure("--output", str(tmp_path / "elsewhere"))[0]["train_wall_minutes"] == 3.3


@pytest.mark.parametrize("method", ["meanpool", "kv"])
def test_the_speed_benchmark_counts_the_tokens_the_layers_run_on(tiny_dir, method):
    """soft_train_speed's FLOP count: the encoder's tokens (and slots) plus the decoder's marker and tail, as many as
    the first layer sees in a training step (the soft prompt the decoder reads is its cache, not its input)."""
    import soft_train_speed

    from mmcompress import create_compressor
    from mmcompress.soft.kv import KvConfig
    from mmcompress.soft.losses import Example, collate

    sizes = {"pool_ratio": 4} if method == "meanpool" else {"num_slots": 4, **KvConfig.MMCOMPRESS_VARIANT}
    c = create_compressor(method, model=str(tiny_dir), device="cpu", dtype="float32", chunk_tokens=16, lora_r=4,
                          **sizes)
    batch = collate([Example(list(range(3, 19)), [], list(range(3, 19)) + [2], "ae")] * 3, 16, 0)
    seen = []
    layer = c.llm.get_decoder().layers[0]
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:2].numel()))
    try:
        c.module.training_step(batch)
    finally:
        handle.remove()
    slots = 0 if method == "meanpool" else 4
    encoder, decoder, labelled = soft_train_speed.step_tokens(batch, slots)
    assert seen == [encoder, decoder]  # full windows: no padding counted
    assert labelled == int((batch["labels"] != -100).sum())
