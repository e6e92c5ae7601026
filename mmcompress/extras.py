"""Optional dependencies: every import of a package outside the core goes through :func:`require`, which names the
pip extra that installs it when it is missing.

    sacrebleu = require("sacrebleu", "BLEU")      # MissingExtraError: ... pip install 'mmcompress[eval]'

The extras are declared in ``pyproject.toml``; :data:`EXTRAS` maps each optional module to its extra and the
distribution that provides it, and a test checks that the two agree.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MMCompressError

# optional module -> (extra, pip distribution)
EXTRAS: dict[str, tuple[str, str]] = {
    "sacrebleu": ("eval", "sacrebleu"),
    "matplotlib": ("eval", "matplotlib"),
    "open_clip": ("vision", "open_clip_torch"),
    "torchvision": ("vision", "torchvision"),
    "easy_vqa": ("vision", "easy-vqa"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "httpx": ("serve", "httpx"),
    "langchain_core": ("langchain", "langchain-core"),
    "llama_index.core": ("llamaindex", "llama-index-core"),
}


class MissingExtraError(MMCompressError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRAS`, or a submodule of one), or raise :class:`MissingExtraError`
    naming the extra. An ImportError raised *inside* an installed package is not masked."""
    top = next((m for m in EXTRAS if module == m or module.startswith(m + ".")), None)
    if top is None:
        raise KeyError(f"{module!r} is not a declared optional dependency; add it to mmcompress.extras.EXTRAS")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name or ""
        if not (missing == top or top.startswith(missing + ".") or missing.startswith(top + ".")
                or missing == top.split(".")[0]):
            raise  # a broken installed package: show its own error
        extra, dist = EXTRAS[top]
        what = f"{purpose} needs" if purpose else "this needs"
        raise MissingExtraError(
            f"{what} the optional package {dist!r}, which is not installed: pip install 'mmcompress[{extra}]'"
        ) from None
