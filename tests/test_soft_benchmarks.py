"""The soft benchmark scripts' own logic, end to end on a tiny saved compressor."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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
