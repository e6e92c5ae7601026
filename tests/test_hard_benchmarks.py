"""The hard-method benchmark scripts' own logic: the paired comparison with random, and the GPU speed script run end
to end on a CPU with a tiny random Llama (what a lent GPU runs, at toy size)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import hard_speed_gpu  # noqa: E402
from multidoc_quality import build_scored, paired_against_random, rates_in_tokens  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(system, rate, kept):
    return [dict(system=system, rate=rate, id=f"q{i}", retention=float(k)) for i, k in enumerate(kept)]


def test_paired_against_random_counts_rows_won_and_lost():
    rows = (_rows("m", 0.4, [1, 1, 1, 0, 1, 0]) + _rows("random", 0.4, [0, 1, 0, 1, 0, 0])
            + _rows("m", 0.2, [0] * 6) + _rows("random", 0.2, [1] * 6))  # another rate: not counted at 0.4
    out = paired_against_random(rows, "m", 0.4)
    assert (out["rows"], out["won"], out["lost"]) == (6, 3, 1)
    assert out["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # exact binomial, 1 of 4 discordant rows
    lopsided = paired_against_random(rows, "m", 0.2)
    assert (lopsided["won"], lopsided["lost"]) == (0, 6) and lopsided["mcnemar_p"] == pytest.approx(2 / 64)
    tie = paired_against_random(_rows("m", 0.4, [1, 0]) + _rows("random", 0.4, [0, 1]), "m", 0.4)
    assert tie["mcnemar_p"] == 1.0


def test_scorer_dimension_names_each_scored_system_and_counts_rates_in_one_tokenizer(tiny_dir):
    from mmcompress.evaluation import build_system
    from mmcompress.evaluation.harness import QAExample
    from mmcompress.models import load_tokenizer

    named = build_scored(build_system, "llmlingua", str(tiny_dir), True)
    assert named.name == f"llmlingua [{tiny_dir}]" and named.compressor.config.model == str(tiny_dir)
    assert build_scored(build_system, "llmlingua", None, False).name == "llmlingua"  # the config's own scorer
    tok = load_tokenizer(str(tiny_dir))
    ex = QAExample(id="q0", question="Who?", answers=["Ann"], documents=["Ann met Bob in the garden at noon."])
    original = ex.prompt().text
    half = original[: len(original) // 2]
    rows = [dict(system="a [x]", rate=0.5, id="q0", prompt=half), dict(system="a [x]", rate=0.5, id="q9", prompt="x")]
    n_half, n_all = (len(x) for x in tok([half, original], add_special_tokens=False)["input_ids"])
    # q9 is not one of the examples: left out
    assert rates_in_tokens(rows, [ex], tok) == {"a [x] @ 0.5": pytest.approx(n_half / n_all, abs=1e-4)}


def test_gpu_speed_script_runs_end_to_end_on_a_cpu(tiny_dir, tmp_path):
    words = "the telescope recorded faint light from a distant galaxy while engineers cooled the mirror".split()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What did row {r} record?",
                                        "documents": [" ".join(words[(r + d) % 5:] + words[: (r + d) % 5])
                                                      for d in range(10)]}) + "\n" for r in range(3)))
    out = tmp_path / "speed"
    rc = hard_speed_gpu.main(["--size", "tiny", "--device", "cpu", "--tokenizer", str(tiny_dir), "--data", str(data),
                              "--tokens", "160,320", "--docs", "8", "--rows", "2", "--rounds", "2",
                              "--methods", "llmlingua,longllmlingua batch_streams", "--out", str(out)])
    assert rc == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [(t["method"], t["length"]) for t in summary["table"]] == [
        ("llmlingua", 160), ("longllmlingua batch_streams", 160), ("llmlingua", 320),
        ("longllmlingua batch_streams", 320)]
    for t in summary["table"]:  # the spread of the per-round ratios (2 rounds of 2 prompts)
        assert 0 < t["ours_x_floor_round_min"] <= t["ours_x_floor_round_max"] and t["peer_x_floor"] is None
    for t in summary["table"]:
        assert t["ours_s"] > 0 and t["floor_s"] > 0 and t["ours_x_floor"] == pytest.approx(
            sum(e[t["method"]] / e["floor"] for e in summary["per_prompt"] if e["length"] == t["length"]) / 2)
        # documents of tokens/docs tokens each, plus the instruction, question and separators
        assert t["length"] <= t["tokens"] <= t["length"] + 60
    assert "tiny" in summary["scorer"] and "random weights" in summary["scorer"]
    assert "| llmlingua | " in out.with_suffix(".md").read_text()


def test_interleaved_rounds_put_every_side_in_every_place():
    import hard_speed

    orders = hard_speed.side_orders(["peer", "ours", "floor"], 3)
    assert orders[0] == ["peer", "ours", "floor"] and len({tuple(o) for o in orders}) == 3
    for place in range(3):
        assert {o[place] for o in orders} == {"peer", "ours", "floor"}
    assert hard_speed_gpu.side_orders(["floor", "a"], 3) == [["floor", "a"], ["a", "floor"], ["floor", "a"]]


def test_gpu_speed_script_refuses_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "q?", "documents": ["a b c"]}) + "\n")
    assert hard_speed_gpu.main(["--device", "cuda", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "no GPU" in capsys.readouterr().out


def test_long_input_results_keep_earlier_rows_with_their_command(tmp_path):
    """``llmlingua_long.py --keep-previous``: an earlier run's rows come back, each with the length it asked for
    (read from its command) and that command, so a merged table says which run measured which row."""
    import llmlingua_long

    path = tmp_path / "long.json"
    assert llmlingua_long.previous_rows(path) == []
    command = "PYTHONPATH=. python benchmarks/llmlingua_long.py --tokens 10240,32768 --threads 1"
    path.write_text(json.dumps({"command": command, "rows": [{"prompt tokens": 10518}, {"prompt tokens": 33258}]}))
    rows = llmlingua_long.previous_rows(path)
    assert [r["tokens asked"] for r in rows] == [10240, 32768]
    assert all(r["command"] == command for r in rows) and rows[0]["prompt tokens"] == 10518
    path.write_text(json.dumps({"command": "x", "rows": [{"prompt tokens": 10518, "command": "first run"}]}))
    assert llmlingua_long.previous_rows(path)[0]["command"] == "first run"  # a merged file keeps each row's own
