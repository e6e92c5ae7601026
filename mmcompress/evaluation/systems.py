"""From a method's name to a system of the QA harness (what ``mmcompress eval --method`` and
``benchmarks/equal_budget.py`` call).

- a registered system (``full``, the KV presses, anything added with :func:`~.harness.register_system`);
- ``HARD+PRESS`` (``selective_context+snapkv``): :class:`~.cache_systems.HardCacheSystem`, each at ``sqrt(rate)``;
- ``HARD+SOFT`` (``longllmlingua+icae``): an :class:`mmcompress.Pipeline` of the hard method at ``hard_rate`` and the
  soft one at the rest of the budget (:class:`~.soft_reader_system.SoftReaderSystem`);
- else a compressor (name, YAML, saved folder): hard methods answer from their text
  (:class:`~.harness.HardCompressorSystem`) or, with ``through_cache``, from the cache the reader prefills from it
  (:class:`~.cache_systems.HardCacheSystem`, measured like every cache system); other families give their
  ``qa_system(reader)``.

``make(name, rate)`` creates the compressors (default :func:`mmcompress.create_compressor` with the overrides;
``rate`` is given for a pipeline's hard stage): a caller that loads weights or caches compressions passes its own.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cache_systems import HardCacheSystem
from .harness import SYSTEMS, HardCompressorSystem, QASystem
from .soft_reader_system import SoftReaderSystem

Make = Callable[..., Any]  # make(name, rate=None) -> compressor


def build_system(method: str, reader: Any, *, through_cache: bool = False, soft_task: str = "qa",
                 hard_rate: float = 0.5, make: Make | None = None, **overrides: Any) -> QASystem:
    """A registered QA system, a ``HARD+PRESS`` / ``HARD+SOFT`` pair, else a compressor wrapped with the reader."""
    import importlib

    importlib.import_module("mmcompress")
    make = make or _creator(overrides)
    key = method.strip().lower().replace("-", "_")
    if key in SYSTEMS:
        return SYSTEMS.get(key)(reader, **overrides)
    if "+" in method and not Path(method).exists():
        return pair_system(method, reader, make, soft_task=soft_task, hard_rate=hard_rate)
    compressor = make(method)
    if getattr(compressor, "family", None) == "hard":
        if through_cache:
            return HardCacheSystem(compressor, reader)
        return HardCompressorSystem(compressor, reader, name=Path(method).stem if method.endswith((".yaml", ".yml")) else None)
    if getattr(compressor, "family", None) == "soft":
        return compressor.qa_system(reader, task=soft_task)
    if hasattr(compressor, "qa_system"):
        return compressor.qa_system(reader)
    raise ConfigError(f"{method!r} is a {compressor.family} compressor without a QA system; give it a "
                      "qa_system(reader) method or register one with @register_system")


def pair_system(method: str, reader: Any, make: Make, *, soft_task: str = "qa", hard_rate: float = 0.5) -> QASystem:
    """``HARD+PRESS`` or ``HARD+SOFT`` (see the module docstring)."""
    from ..kvcache.base import list_presses

    hard_name, _, second = method.partition("+")
    if not hard_name or not second or "+" in second:
        raise ConfigError(f"pipeline {method!r}: write HARD+PRESS or HARD+SOFT (two names joined by '+')")
    hard = make(hard_name) if second in list_presses() else make(hard_name, rate=hard_rate)
    if getattr(hard, "family", None) != "hard":
        raise ConfigError(f"pipeline {method!r}: {hard_name!r} is not a hard method")
    if second in list_presses():
        return HardCacheSystem(hard, reader, press=second, name=method)
    soft = make(second)
    if getattr(soft, "family", None) != "soft":
        raise ConfigError(f"pipeline {method!r}: {second!r} is neither a KV press ({', '.join(list_presses())}) "
                          "nor a soft method")
    from ..pipeline import Pipeline

    return SoftReaderSystem(Pipeline([hard, soft]), reader, task=soft_task, hard_rate=hard_rate, name=method)


def _creator(overrides: dict[str, Any]) -> Make:
    def make(name: str, rate: float | None = None) -> Any:
        from ..factory import create_compressor

        return create_compressor(name, **overrides) if rate is None else create_compressor(name, **overrides, rate=rate)

    return make
