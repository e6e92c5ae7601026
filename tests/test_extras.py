"""Optional dependencies: the core imports without them, and each optional feature fails with a message naming the
pip extra that installs it (mmcompress/extras.py), in step with pyproject.toml."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmcompress.errors import MMCompressError
from mmcompress.extras import EXTRAS, MissingExtraError, require

REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter in which every optional package is missing (a finder that refuses them).
BLOCKER = """
import sys
BLOCK = {"sacrebleu", "matplotlib", "open_clip", "torchvision", "easy_vqa", "fastapi", "uvicorn", "httpx",
         "langchain_core", "llama_index"}
for name in BLOCK:
    sys.modules[name] = None  # import fails and importlib.util.find_spec says "absent", as when not installed
"""


def _run_without_extras(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_extras_table_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    def names(specs):
        return {s.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-") for s in specs}

    for module, (extra, dist) in EXTRAS.items():
        assert dist.lower().replace("_", "-") in names(extras[extra]), (module, extra, dist)
        assert dist.lower().replace("_", "-") not in names(core), f"{dist} is optional but listed as core"
    # dev installs every extra, so CI tests all of them
    dev_self = [s for s in extras["dev"] if s.startswith("mmcompress[")]
    assert dev_self and set(dev_self[0][len("mmcompress["):-1].split(",")) == set(extras) - {"dev"}


def test_require_names_the_extra_and_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # "not installed"
    with pytest.raises(MissingExtraError, match=r"BLEU needs .*sacrebleu.*pip install 'mmcompress\[eval\]'") as e:
        require("sacrebleu", "BLEU")
    assert isinstance(e.value, MMCompressError) and isinstance(e.value, ImportError)
    with pytest.raises(KeyError, match="not a declared optional dependency"):
        require("json")


def test_require_does_not_mask_a_broken_installed_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # an earlier test may have imported it already
    # matplotlib missing is reported as matplotlib's extra even when asked through a submodule
    with pytest.raises(MissingExtraError, match=r"mmcompress\[eval\]"):
        require("matplotlib.pyplot")


def test_core_works_and_each_feature_names_its_extra_without_optional_packages(tiny_dir):
    proc = _run_without_extras("""
        import sys
        import mmcompress
        from mmcompress.extras import MissingExtraError
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK and sys.modules[m] is not None)
        assert not loaded, loaded
        r = mmcompress.compress("The quick brown fox jumps over the lazy dog. " * 4, method="random", rate=0.5,
                                model=sys.argv[1])
        assert r.compressed_tokens < r.origin_tokens
        def expect(extra, fn):
            try:
                fn()
            except MissingExtraError as e:
                assert f"mmcompress[{extra}]" in str(e), e
                print("ok", extra, e)
            else:
                raise AssertionError(f"no MissingExtraError for {extra}")
        from mmcompress.evaluation.metrics import bleu4
        expect("eval", lambda: bleu4(["a b"], ["a b"]))
        from mmcompress.vision.encoders import OpenCLIPEncoder
        expect("vision", lambda: OpenCLIPEncoder("ViT-B-16"))
        from mmcompress.multimodal.tasks import load_shapes
        expect("vision", lambda: load_shapes("train"))
        import importlib
        expect("langchain", lambda: importlib.import_module("mmcompress.integrations.langchain"))
        expect("llamaindex", lambda: importlib.import_module("mmcompress.integrations.llamaindex"))
        expect("serve", lambda: importlib.import_module("mmcompress.serve.app"))
        from mmcompress.cli import main
        assert main(["serve", "--port", "1"]) == 2  # one line "error: ... mmcompress[serve]", exit 2
    """, str(tiny_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 6, proc.stdout
    assert "error: mmcompress serve needs the optional package 'uvicorn'" in proc.stderr
