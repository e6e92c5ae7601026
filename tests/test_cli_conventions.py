"""CLI conventions shared by every command: statistics on stderr (never in the output), --version, --quiet,
--no-progress, one spelling of the output flag (old spellings still accepted), --device and --model-kwargs."""
from __future__ import annotations

import json

import pytest

from mmcompress.cli import main

DOC = "Paris is the capital and most populous city of France. The river flows to the sea. " * 3


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    import mmcompress

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mmcompress {mmcompress.__version__}"


def test_stats_go_to_stderr_not_into_the_output_file_and_quiet_silences_them(capsys, tmp_path, tiny_dir):
    out_file = tmp_path / "out.txt"
    code, out, err = run(capsys, "compress", DOC, "--method", "random", "--rate", "0.5", "--model", tiny_dir,
                         "-o", out_file)
    assert code == 0 and out == "" and "--- random:" in err
    written = out_file.read_text()
    assert "---" not in written and 0 < len(written.strip()) < len(DOC)
    code, out, err = run(capsys, "compress", DOC, "--method", "random", "--rate", "0.5", "--model", tiny_dir, "--quiet")
    assert code == 0 and err == "" and out.strip() == written.strip()


def test_no_progress_hides_the_bar_of_a_long_jsonl_run(capsys, tmp_path, tiny_dir):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Row {i}: {DOC}"}) + "\n" for i in range(25)))
    code, out, err = run(capsys, "compress", path, "--jsonl", "--method", "random", "--model", tiny_dir)
    assert code == 0 and "25/25" in err  # more than 20 rows: a progress bar by default
    code, out, err = run(capsys, "compress", path, "--jsonl", "--method", "random", "--model", tiny_dir,
                         "--no-progress")
    assert code == 0 and "25/25" not in err and len(out.splitlines()) == 25


def test_one_output_flag_with_old_spellings_hidden(capsys):
    from mmcompress.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps subparsers here
    for name in ("compress", "eval", "train"):
        flags = {s for a in sub[name]._actions for s in a.option_strings}
        assert {"--output", "-o"} <= flags, name
        assert "--output" in sub[name].format_help()
    assert "--out " not in sub["eval"].format_help() and "--output-dir" not in sub["train"].format_help()
    assert sub["eval"].parse_args(["--data", "x", "--method", "random", "--out", "folder"]).output == "folder"
    assert sub["eval"].parse_args(["--data", "x", "--method", "random"]).output == "eval_results"
    assert sub["train"].parse_args(["--config", "r.yaml", "--output-dir", "runs/x"]).output == "runs/x"


def test_device_and_model_kwargs_reach_the_model_loader(capsys, tiny_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    import mmcompress.models.loading as loading

    seen = []

    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    loading._load_language_model.cache_clear()
    code, out, err = run(capsys, "compress", DOC, "--method", "selective_context", "--rate", "0.5", "--model", tiny_dir,
                         "--device", "cpu", "--model-kwargs", '{"attn_implementation": "eager"}', "--quiet")
    assert code == 0, err
    assert seen and seen[-1]["attn_implementation"] == "eager"


@pytest.mark.parametrize("value, words", [("{bad", "not valid JSON"), ("[1]", "expected a JSON object")])
def test_bad_model_kwargs_is_a_one_line_usage_error(capsys, value, words):
    with pytest.raises(SystemExit) as e:
        main(["compress", DOC, "--model-kwargs", value])
    assert e.value.code == 2 and words in capsys.readouterr().err

