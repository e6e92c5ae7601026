"""The command line: round trips, JSONL mode, and one-line errors with exit code 2 for every bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmcompress.cli import main

DOC = ("Paris is the capital and most populous city of France. The river flows to the sea. "
       "Berlin is the capital of Germany. The quick brown fox jumps over the lazy dog.\n\n"
       "Photosynthesis converts light energy into chemical energy.")


@pytest.fixture
def doc_file(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOC)
    return path


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_round_trip(capsys, doc_file, tiny_dir):
    code, out, err = run(capsys, "compress", doc_file, "--rate", "0.5", "--json", "--model", tiny_dir,
                         "--question", "What is the capital of France?")
    assert code == 0, err
    data = json.loads(out)
    assert data["compressed_prompt"].endswith("What is the capital of France?")
    assert data["origin_tokens"] > data["compressed_tokens"] > 0
    assert abs(data["rate"] - data["compressed_tokens"] / data["origin_tokens"]) < 1e-6
    assert [s.get("role") for s in data["segments"]] == ["text", "question"]


def test_plain_output_stdin_and_literal_text(capsys, monkeypatch, tiny_dir):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DOC.encode())))
    code, out, _ = run(capsys, "compress", "-", "--method", "truncate", "--target-tokens", "20", "--model", tiny_dir)
    assert code == 0 and "--- truncate:" in out and "-> " in out
    assert DOC.startswith(out.split("\n--- ")[0].strip())
    code, out, _ = run(capsys, "compress", "A literal prompt with several words in it.", "--method", "random",
                       "--rate", "0.5", "--model", tiny_dir, "--set", "seed=4")
    assert code == 0 and "--- random:" in out


def test_jsonl_mode_one_result_per_line(capsys, tmp_path, tiny_dir):
    rows = [{"id": "a", "context": DOC, "question": "Which city?"},
            {"id": "b", "documents": [DOC, "Second doc about Berlin."], "instruction": "Answer."},
            {"id": "c", "prompt": "Short prompt about the river and the sea."}]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out_path = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "compress", path, "--jsonl", "--rate", "0.6", "--model", tiny_dir, "-o", out_path)
    assert code == 0, err
    results = [json.loads(l) for l in out_path.read_text().splitlines()]
    assert [r["id"] for r in results] == ["a", "b", "c"]
    assert results[0]["compressed_prompt"].endswith("Which city?")
    assert results[1]["compressed_prompt"].startswith("Answer.")


def test_list_shows_methods_and_configs(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("selective_context", "random", "truncate", "selective-context-phrase"):
        assert name in out


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, d: ["compress", t / "missing.txt", "--rate", "0.5"], "input file not found"),
        (lambda t, d: ["compress", t, "--rate", "0.5"], "is a folder"),
        (lambda t, d: ["compress", t / "empty.txt", "--rate", "0.5"], "empty"),
        (lambda t, d: ["compress", t / "latin1.txt", "--rate", "0.5"], "not UTF-8"),
        (lambda t, d: ["compress", t / "doc.txt", "--rate", "0"], "rate must be"),
        (lambda t, d: ["compress", t / "doc.txt", "--rate", "1.5"], "rate must be"),
        (lambda t, d: ["compress", t / "doc.txt", "--target-tokens", "0"], "target_tokens"),
        (lambda t, d: ["compress", t / "doc.txt", "--target-tokens", "100000", "--model", d], "larger than the prompt"),
        (lambda t, d: ["compress", t / "doc.txt", "--target-tokens", "3", "--model", d, "--question",
                       "What is the capital of France and what is the capital of Germany?"], "below what the kept"),
        (lambda t, d: ["compress", t / "doc.txt", "--method", "nope"], "unknown compressor 'nope'"),
        (lambda t, d: ["compress", t / "doc.txt", "--model", "acme/no-such-model", "--rate", "0.5"], "acme/no-such-model"),
        (lambda t, d: ["compress", t / "doc.txt", "--set", "unit=paragraph"], "unit must be"),
        (lambda t, d: ["compress", t / "doc.txt", "--set", "nonsense"], "key=value"),
        (lambda t, d: ["compress", t / "rows.jsonl", "--jsonl", "--model", d], "line 2: not valid JSON"),
        (lambda t, d: ["train", "--config", t / "nope.yaml"], "recipe not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, tiny_dir, make_args, message):
    (tmp_path / "doc.txt").write_text(DOC)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text('{"prompt": "fine"}\n{not json}\n')
    code, out, err = run(capsys, *make_args(tmp_path, str(tiny_dir)))
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_argparse_errors_also_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compress", "--rate", "half"])
    assert e.value.code == 2


def test_installed_entry_point(tmp_path, tiny_dir):
    path = tmp_path / "doc.txt"
    path.write_text(DOC)
    proc = subprocess.run([sys.executable, "-m", "mmcompress", "compress", str(path), "--rate", "0.5", "--json",
                           "--model", str(tiny_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "selective_context"
    bad = subprocess.run([sys.executable, "-m", "mmcompress", "compress", str(tmp_path / "nope.txt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: input file not found: {tmp_path / 'nope.txt'}"
