"""The base of every config dataclass: fields are type-checked when a config is built, from Python, YAML or ``--set``.

``Config.__post_init__`` reads each field's annotation and

- refuses a value of the wrong type with a :class:`~mmcompress.errors.ConfigError` naming the field
  (``RandomConfig.seed must be an integer, got 'abc'``);
- coerces the harmless cases: a number written as a string (YAML 1.1 reads ``5e-4`` as a string), an integral float
  for an int field, an int for a float field, a path for a str field;
- refuses NaN and infinite numbers, negative numbers, and zero where the name says a count or size must be positive
  (one table for all configs: a name means the same thing in every config of the toolkit);
- checks ``device`` and ``dtype`` strings against what :func:`~mmcompress.models.loading.pick_device` and
  ``pick_dtype`` accept.

Subclasses that define ``__post_init__`` call ``super().__post_init__()`` first.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, ClassVar, Union

from .errors import ConfigError

# numbers that count or size something: zero would divide by zero or build an empty layer
POSITIVE = frozenset({
    "batch_size", "max_steps", "grad_accum", "log_every", "max_batch_tokens", "chunk_tokens", "num_slots", "lora_r",
    "lora_alpha", "max_new_tokens", "max_input_tokens", "max_seq_len", "max_chunks", "heads", "depth", "dim_head",
    "in_dim", "out_dim", "width", "iterative_size", "temperature", "eval_batches", "bptt_segments", "keep_checkpoints",
    "max_summary_segments", "image_tokens", "text_dim", "projector_hidden", "use_slots", "ff_mult",
    "cross_attention_frequency", "token_budget_ratio",
})
DEVICE = re.compile(r"^(auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?)$")
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


@dataclasses.dataclass
class Config:
    """Base of config dataclasses: typed fields checked on construction, ``from_dict`` refusing unknown keys."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None):
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {cls.field_names()}")
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"bad value for {cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_hints(cls: type) -> dict[str, Any]:
    hints = Config._hints.get(cls)
    if hints is None:
        hints = Config._hints[cls] = typing.get_type_hints(cls)
    return hints


def check_fields(config: Any) -> None:
    """Type-check (and coerce, see the module docstring) every field of the dataclass ``config`` in place."""
    hints = _type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{type(config).__name__}.{f.name}"
        checked = _check(value, hints.get(f.name, Any), where)
        if checked is not value:
            object.__setattr__(config, f.name, checked)
        _check_domain(f.name, checked, where)


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(value, option, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1:
            for item in value:
                _check(item, args[0], where)
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        return _integer(value, where)
    if hint is float:
        return _number(value, where)
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # other annotations (callables, classes) are the field's own business


def _describe(hint: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in typing.get_args(hint))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value if type(value) is float else number


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if type(value) is int:
        return value
    try:
        number = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not number.is_integer():
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    return int(number)


def _check_domain(name: str, value: Any, where: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if name in POSITIVE and value <= 0:
            raise ConfigError(f"{where} must be > 0, got {value!r}")
        if value < 0 and name not in NEGATIVE_ALLOWED:
            raise ConfigError(f"{where} must be >= 0, got {value!r}")
    elif isinstance(value, str):
        if name == "device" and not DEVICE.match(value):
            raise ConfigError(f"{where} must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        if name == "dtype" and value.lower() not in DTYPES:
            raise ConfigError(f"{where} must be one of {', '.join(DTYPES)}, got {value!r}")


# numbers that may be negative (none of the toolkit's configs has one yet; a new config lists its own here)
NEGATIVE_ALLOWED: frozenset[str] = frozenset()
