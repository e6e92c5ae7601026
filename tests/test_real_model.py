"""The real-model tier: Selective Context on SmolLM2-135M with SQuAD contexts, and the README's main job."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcompress import create_compressor

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def contexts():
    from conftest import shared_file

    rows = [json.loads(l) for l in shared_file("squad_dev.jsonl").read_text().splitlines()]
    return rows[:24]


@pytest.mark.parametrize("unit", ["token", "phrase"])
def test_selective_context_meets_the_rate_on_squad(smollm2, contexts, unit):
    sc = create_compressor("selective_context", model=smollm2.model, tokenizer=smollm2.tokenizer, unit=unit)
    for rate in (0.25, 0.5, 0.75):
        results = sc.compress_batch([r["context"] for r in contexts], rate=rate)
        achieved = np.array([r.rate for r in results])
        assert np.abs(achieved - rate).max() <= 0.05, (unit, rate, achieved)


def test_question_survives_and_answers_are_more_often_kept_than_at_random(smollm2, contexts):
    from mmcompress.evaluation import contains_answer

    sc = create_compressor("selective_context", model=smollm2.model, tokenizer=smollm2.tokenizer, unit="phrase")
    rnd = create_compressor("random", model=smollm2.model, tokenizer=smollm2.tokenizer, unit="token")
    prompts = [r["context"] for r in contexts]
    kept_sc = [contains_answer(x.text, r["answers"]) for x, r in zip(sc.compress_batch(prompts, rate=0.5), contexts)]
    kept_rnd = [contains_answer(x.text, r["answers"]) for x, r in zip(rnd.compress_batch(prompts, rate=0.5), contexts)]
    assert np.mean(kept_sc) > np.mean(kept_rnd)
    with_q = sc.compress(contexts[0]["context"], rate=0.5, question=contexts[0]["question"])
    assert with_q.text.endswith("\n\n" + contexts[0]["question"])


def test_readme_main_job(tmp_path):
    """What `python3 dev.py demo` runs: the shipped example through the CLI with the embedded default model."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmcompress", "compress", str(REPO / "examples/data/telescope.txt"), "--rate", "0.5",
         "--question", "Who built the first practical reflecting telescope?", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert abs(data["rate"] - 0.5) <= 0.05
    assert data["compressed_prompt"].endswith("Who built the first practical reflecting telescope?")
    assert data["compressed_prompt"].count("\n\n") >= 3  # paragraphs survive
