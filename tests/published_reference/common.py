"""Shared pieces of the published-checkpoint reference scripts (``xrag.py``, ``autocompressor.py``, ``gist.py``).

Each script runs the official code of one release in its own virtual environment, pinned to the transformers
version that code needs, on a tiny random model saved in the release's layout, and writes golden outputs that
``tests/test_published_<format>.py`` compare mmcompress against. The environments live under
``~/.cache/mmcompress-peer`` (``MMCOMPRESS_PEER_CACHE``). torch comes from the CPU wheel index when it is reachable;
otherwise the environment reuses the torch of the interpreter that runs the script (its site-packages are appended
to the venv's path *after* the pinned transformers, which shadows the newer one).

The official code itself is read from a checkout of the release's repository at the pinned commit, passed as
``--repo`` (``git clone https://github.com/<owner>/<name> && git -C <name> checkout <commit>``).
"""
from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import sysconfig
from pathlib import Path

CACHE = Path(os.environ.get("MMCOMPRESS_PEER_CACHE", Path.home() / ".cache" / "mmcompress-peer"))
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"

# How the tiny tokenizers are trained (the same few lines as tests/tiny_models.py's CORPUS, kept here so that the
# reference environments import nothing from mmcompress).
CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Super Bowl 50 was an American football game to determine the champion of the National Football League.
The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.
Paris is the capital and most populous city of France. Berlin is the capital of Germany. The river flows to the sea.
Photosynthesis converts light energy into chemical energy that can later be released to fuel the organism.
What is the capital of France? Which team won the game? Answer the question using the documents.
Neural networks learn representations from data; transformers use attention over tokens. 0123456789 !?,.;:'"()-
[INST] Refer to the background document: Background: [/INST] The answer is: ### Instruction: ### Input: ### Response:
"""


# every character the prompts use, so that no test text hits <unk> (tokenizers versions differ in how they emit it)
ALPHABET = string.ascii_letters + string.digits + string.punctuation + "\n"


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """The venv ``CACHE/name`` with ``requirements`` installed (created once); returns its python."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    subprocess.check_call([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.check_call(pip + requirements + ["safetensors", "sentencepiece"])
    cpu_torch = subprocess.call(pip + ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"])
    if cpu_torch != 0:  # no wheel index: reuse this interpreter's torch, behind the venv's own packages
        site = Path(sysconfig.get_paths()["purelib"])
        target = Path(subprocess.check_output([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                                              text=True).strip())
        (target / "zz_reuse_torch.pth").write_text(f"{site}\n")
    (venv / ".complete").write_text("ok\n")
    return python


def reexec_in(python: Path, script: str, argv: list[str]) -> None:
    """Run ``script`` again under ``python`` unless this interpreter already is it."""
    if Path(sys.prefix).resolve() != python.parent.parent.resolve():
        os.execv(str(python), [str(python), script, *argv])


def enter_reference(script: str, doc: str, repo_help: str, venv: str, requirements: list[str],
                    default_out: Path) -> tuple[Path, Path]:
    """Parse ``--repo`` / ``--out``, move into the pinned venv (re-running ``script`` there), put the official
    checkout on ``sys.path``; returns ``(repo, out)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repo", required=True, help=repo_help)
    parser.add_argument("--out", default=str(default_out))
    args = parser.parse_args()
    reexec_in(ensure_venv(venv, requirements), script, sys.argv[1:])
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    return repo, Path(args.out)


def stamp(source: str) -> dict:
    """Where the golden outputs come from: the official commit and the versions that ran it."""
    import torch
    import transformers

    return {"source": source, "transformers": transformers.__version__, "torch": torch.__version__}


def llama_tokenizer(vocab_size: int = 320):
    """A tiny sentencepiece-style BPE (``▁`` for spaces, ``<unk>``/``<s>``/``</s>``, BOS added) as a
    ``LlamaTokenizerFast``, laid out as transformers' Llama converter writes Llama-2 / Mistral tokenizers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=list(ALPHABET))
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # BOS in tokenizer.json itself, as Llama's converted tokenizers have it (older LlamaTokenizerFast versions
    # do not add it from ``add_bos_token``)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                              add_bos_token=True, add_eos_token=False)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")


def as_list(tensor) -> list:
    return tensor.detach().float().cpu().tolist()
