"""Reading a released Hugging Face model folder without loading the model: its config.json and chosen tensors.

Releases ship one ``model.safetensors`` / ``pytorch_model.bin`` or shards listed in ``*.index.json``; the tensors a
loader needs (a projector, summary embeddings) are read from the shards that hold them only.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConfigError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def read_config(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict, or None when there is none or it is not JSON."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def architectures(folder: Path) -> set[str]:
    config = read_config(folder) or {}
    return {str(a) for a in config.get("architectures") or []}


def weight_files(folder: Path) -> dict[str, Path]:
    """``tensor name -> file`` for every tensor of the folder's weights (from the shard index when there is one)."""
    folder = Path(folder)
    for index in INDEX_FILES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise ConfigError(f"{folder / index} is not a readable shard index ({e})") from None
            return {name: folder / file for name, file in weight_map.items()}
    for single in SINGLE_FILES:
        if (folder / single).is_file():
            return {name: folder / single for name in _tensor_names(folder / single)}
    raise ConfigError(f"{folder} has no model weights ({', '.join(SINGLE_FILES + INDEX_FILES)})")


def load_tensors(folder: Path, wanted: Callable[[str], bool], what: str) -> dict[str, Any]:
    """The tensors whose names satisfy ``wanted``; a :class:`ConfigError` naming ``what`` when there are none."""
    files = weight_files(folder)
    names = [n for n in files if wanted(n)]
    if not names:
        raise ConfigError(f"{folder} has no {what} in its weights; is it the right release?")
    out: dict[str, Any] = {}
    for file in sorted({files[n] for n in names}):
        tensors = _read(file)
        out.update({n: tensors[n] for n in names if n in tensors})
    return out


def _tensor_names(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            return list(f.keys())
    return list(_read(file))


def _read(file: Path) -> dict[str, Any]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        import torch

        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or truncated download
        raise ConfigError(f"{file} is not a readable weights file ({e})") from None
