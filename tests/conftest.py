"""Shared fixtures: tiny offline models for the fast tier, the real SmolLM2 for the slow tier, shared data paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_bpe_tokenizer, make_gpt2, make_llama  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; on a loaded machine more threads spin-wait for each other.
    Modules of tiny-model tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny Llama (window 128) and its BPE tokenizer, like a model downloaded from the hub."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_llama(make_bpe_tokenizer(), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    """``(model, tokenizer)`` of the tiny Llama."""
    from mmcompress.models import load_language_model

    lm = load_language_model(str(tiny_dir), device="cpu", dtype="float32")
    return lm.model, lm.tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = make_bpe_tokenizer()
    model = make_gpt2(tokenizer, folder)
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default model (slow tier)."""
    from mmcompress.models import load_language_model

    return load_language_model("smollm2-135m", device="cpu", dtype="float32")


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is absent)")
    return path


@pytest.fixture
def squad_rows():
    import json

    path = shared_file("squad_dev.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]
