"""Registries by name: compressors, and any other family of parts (image encoders, adapters, reductions...).

    @register_compressor("selective_context")
    class SelectiveContext(HardCompressor): ...

Names are unique, lowercase identifiers; registering a second class under a taken name is an error.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import UnknownCompressorError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """A name -> class mapping with a decorator to fill it and clear errors for unknown names."""

    def __init__(self, kind: str, *, name_attribute: str | None = None):
        self.kind = kind
        self.name_attribute = name_attribute  # set on registered classes, e.g. Compressor.name
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} names must be lowercase identifiers (a-z, 0-9, _ or -), got {name!r}")

        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
            self._items[name] = obj
            if self.name_attribute and isinstance(obj, type):
                setattr(obj, self.name_attribute, name)
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = str(name).strip().lower().replace("-", "_") if isinstance(name, str) else name
        if key in self._items:
            return self._items[key]
        if name in self._items:
            return self._items[name]
        raise UnknownCompressorError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


COMPRESSORS: Registry[Any] = Registry("compressor", name_attribute="name")


def register_compressor(name: str):
    """Class decorator: make a compressor available to :func:`create_compressor` under ``name``."""
    return COMPRESSORS.register(name)


def get_compressor_class(name: str):
    return COMPRESSORS.get(name)


def list_compressors(family: str | None = None) -> list[str]:
    """Registered compressor names (optionally only one family: hard, soft, vision, pipeline)."""
    return [n for n, cls in COMPRESSORS.items() if family is None or getattr(cls, "family", None) == family]
