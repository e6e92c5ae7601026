"""``create_compressor(name | config.yaml | saved folder, **overrides)`` and the shipped YAML configs.

A YAML config names its compressor and sets fields of its config dataclass::

    compressor: selective_context
    unit: phrase
    rate: 0.5

Keyword overrides beat the file. Shipped configs (``mmcompress/configs/**/*.yaml``, package data) can be named by their
file stem, e.g. ``create_compressor("selective-context-phrase")``; :func:`add_config_path` adds more folders. A path
``configs/...`` that does not exist from the working directory is read from the package's folder, so the repository
paths (``configs/hard/llmlingua.yaml``) work from anywhere, also after a wheel install.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownCompressorError
from .registry import COMPRESSORS

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
_CONFIG_PATHS: list[Path] = [SHIPPED_CONFIGS]
SAVED_CONFIG_FILE = "mmcompress_config.json"  # written by save_pretrained of trainable compressors
# trained compressors shipped inside the package (package data): saved folders loadable by their folder name
TRAINED_DIR = Path(__file__).resolve().parent / "trained"
TRAINED_CARD = "TRAINED.json"  # what a shipped compressor reaches: ratio, numbers, the command that trained it


def list_trained() -> dict[str, Path]:
    """Trained compressors shipped in the package, by name -> saved folder."""
    if not TRAINED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(TRAINED_DIR.iterdir()) if (p / SAVED_CONFIG_FILE).is_file()}


def trained_or_saved(source: str | Path, what: str) -> Path:
    """The folder of a shipped trained compressor named ``source`` (``soft-smollm2-4x``), else ``source`` as a saved
    folder (found as recipe data paths are: ``../runs/x`` works from a worktree beside the repository too); ``what``
    names the setting in the error (``init_from``)."""
    from .data_paths import resolve_data_path

    shipped = list_trained()
    if str(source) in shipped:
        return shipped[str(source)]
    try:
        folder = resolve_data_path(source)
    except ConfigError:
        folder = None
    if folder is None or not (folder / SAVED_CONFIG_FILE).is_file():
        raise ConfigError(f"{what}: {source} is neither a shipped trained compressor ({', '.join(shipped) or 'none'}) "
                          "nor a folder saved by a trainable compressor; train the run that writes it first")
    return folder


def trained_card(name: str) -> dict[str, Any]:
    """The card of a shipped trained compressor (``{}`` when it has none)."""
    card = TRAINED_DIR / name / TRAINED_CARD
    return json.loads(card.read_text()) if card.is_file() else {}


def add_config_path(path: str | Path) -> None:
    """Add a folder of YAML configs to those searched by name."""
    path = Path(path)
    if path not in _CONFIG_PATHS:
        _CONFIG_PATHS.append(path)


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given if it exists; else a ``configs/...`` path read from the shipped configs folder."""
    path = Path(path).expanduser()
    if not path.exists() and path.parts[:1] == ("configs",):
        shipped = SHIPPED_CONFIGS.joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path


def find_recipe(name: str) -> Path | None:
    """A training recipe by stem (``icae-pretrain``) from ``train/`` of every config folder, or None."""
    for root in _CONFIG_PATHS:
        path = root / "train" / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def list_configs() -> dict[str, Path]:
    """Shipped and added YAML configs by stem -> path."""
    found: dict[str, Path] = {}
    for root in _CONFIG_PATHS:
        if root.is_dir():
            for path in sorted(root.rglob("*.y*ml")):
                found.setdefault(path.stem, path)
    return found


def load_config_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read a YAML config: ``(compressor name, fields)``."""
    import yaml

    from .yaml_io import load_yaml

    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or "compressor" not in data:
        raise ConfigError(f"config {path} must be a mapping with a 'compressor:' key naming the method")
    data = dict(data)
    return str(data.pop("compressor")), data


def create_compressor(name_or_path: str | Path, **overrides: Any):
    """Build a compressor from a registered name, a YAML config, a shipped config's name, or a saved folder."""
    importlib.import_module("mmcompress")  # importing the package registers every family

    if not isinstance(name_or_path, (str, Path)):
        raise UnknownCompressorError(f"expected a compressor name or config path, got {type(name_or_path).__name__}")
    text = str(name_or_path)
    path = resolve_config_path(text)
    if path.is_dir():
        return _from_saved(path, overrides)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        name, fields = load_config_file(path)
        return _build(name, {**fields, **overrides})
    key = text.strip().lower().replace("-", "_")
    if key in COMPRESSORS:
        if overrides.get("checkpoint") is not None:  # a published release: weights on top of a base model
            from .soft.published import load_checkpoint

            return load_checkpoint(key, **overrides)
        return _build(key, overrides)
    trained = list_trained()
    if text in trained:
        return _from_saved(trained[text], overrides)
    configs = list_configs()
    if text in configs:
        name, fields = load_config_file(configs[text])
        return _build(name, {**fields, **overrides})
    from .hub import is_hub_id, snapshot

    if is_hub_id(text):  # org/name: a saved or published compressor on the Hugging Face hub
        return _from_saved(snapshot(text), overrides)
    raise UnknownCompressorError(
        f"unknown compressor {text!r}; methods: {', '.join(COMPRESSORS.names())}; "
        f"trained: {', '.join(trained) or 'none'}; configs: {', '.join(sorted(configs)) or 'none'}"
    )


def read_saved_meta(path: Path, file_name: str = SAVED_CONFIG_FILE) -> dict[str, Any]:
    """The metadata of a saved compressor folder, with a clear error for a missing, broken or incomplete file."""
    meta_file = Path(path) / file_name
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} has no {file_name}; it is not a saved mmcompress compressor") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{meta_file} is not readable JSON ({e}); the saved compressor is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("compressor"), str):
        raise ConfigError(f"{meta_file} has no 'compressor' name; the saved compressor is damaged")
    if not isinstance(meta.get("config", {}), dict):
        raise ConfigError(f"{meta_file}: 'config' must be a mapping of config fields")
    return meta


def load_saved_weights(file: Path) -> dict[str, Any]:
    """Tensors of a saved ``.safetensors`` file, with a clear error for a missing or damaged one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"{file} is missing; the saved compressor has no weights (was saving interrupted?)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{file} is not a readable safetensors file ({e}); the saved compressor is damaged") from None


def _build(name: str, fields: dict[str, Any]):
    # field types are checked (and harmless spellings such as "3" for an int coerced) by the config base when the
    # compressor builds its config: mmcompress/config_base.py
    return COMPRESSORS.get(name)(**fields)


def _from_saved(path: Path, overrides: dict[str, Any]):
    meta_file = path / SAVED_CONFIG_FILE
    if not meta_file.exists():
        from .soft.published import detect_format, published_formats

        fmt = detect_format(path)
        if fmt is not None:
            return fmt.load(path, **overrides)
        known = ", ".join(published_formats()) or "none"
        raise ConfigError(f"{path} is a folder but has no {SAVED_CONFIG_FILE} and is not a published checkpoint layout "
                          f"mmcompress knows ({known}); it is not a saved mmcompress compressor")
    meta = read_saved_meta(path)
    cls = COMPRESSORS.get(meta["compressor"])
    if not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"compressor {meta['compressor']!r} cannot be loaded from a folder")
    return cls.from_pretrained(path, **overrides)
