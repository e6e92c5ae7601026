"""Helpers shared by subcommands: reading inputs, parsing ``--set key=value`` overrides."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputFileError


def read_text(source: str | None) -> str:
    """Text from a file path or ``-`` (stdin); a clear error for missing, unreadable or non-UTF-8 input."""
    if source in (None, "-"):
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise InputFileError(f"{path} is a folder, not a text file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputFileError(f"input file not found: {path}") from None
        except OSError as e:
            raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
        where = str(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{where} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                             "convert it, e.g. with iconv -t UTF-8") from None


def looks_like_literal_text(arg: str) -> bool:
    """A positional argument that is not a file but reads as a prompt (has spaces or an <image> marker)."""
    try:
        exists = Path(arg).expanduser().exists()
    except (OSError, ValueError):  # longer than a file name may be, or a NUL byte: not a file
        exists = False
    return not exists and (any(c.isspace() for c in arg) or "<image>" in arg)


def check_output_path(path: str | None) -> None:
    """Refuse an output file that cannot be written (missing folder, a folder, a read-only file) before any work."""
    if path in (None, "-"):
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputFileError(f"output {target} is a folder; give a file name, e.g. {target / 'out.jsonl'}")
    if not target.parent.is_dir():
        raise InputFileError(f"cannot write {target}: the folder {target.parent} does not exist")
    existed = target.exists()
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise InputFileError(f"cannot write {target}: {e.strerror or e}") from None
    if not existed:
        target.unlink(missing_ok=True)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["unit=phrase", "seed=3"]`` -> ``{"unit": "phrase", "seed": 3}`` (values parsed as YAML scalars)."""
    import yaml

    from ..yaml_io import load_yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = load_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            problem = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                              f"--set '{key.strip()}=\"{value}\"'") from None
    return out
