"""Base classes every compressor builds on.

- :class:`CompressorConfig`: a small dataclass of the method's knobs; YAML configs and ``**overrides`` fill it.
- :class:`Compressor`: ``compress(prompt) -> result``, ``compress_batch(prompts)``, and ``__call__``.

Each family's base builds on these: ``hard/base.py`` (token dropping), ``soft/base.py``, ``vision/reduction/base.py``.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from .budget import check_rate, check_target_tokens
from .errors import ConfigError


@dataclass
class CompressorConfig:
    """Base of every method's config dataclass: no fields of its own, only reading, checking and copying.

    The budget vocabulary: a family that honours a budget by tokens has ``rate`` (fraction of tokens kept) and
    ``target_tokens`` (overrides it) through :class:`BudgetConfig`; a family whose ratio is fixed otherwise (soft
    methods: ``chunk_tokens / num_slots``) does not have them. Every family reports its achieved ``rate`` / ``ratio``
    on its result.
    """

    def __post_init__(self) -> None:
        pass

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompressorConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {cls.field_names()}")
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"bad value for {cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> CompressorConfig:
        return self.from_dict({**self.to_dict(), **changes})


@dataclass
class BudgetConfig(CompressorConfig):
    """Config of a family that keeps a requested share of the tokens: ``rate`` is the fraction kept,
    ``target_tokens`` (if set) overrides it."""

    rate: float = 0.5
    target_tokens: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rate(self.rate)
        check_target_tokens(self.target_tokens)


class Timings(dict):
    """Seconds spent per stage; ``with timings("score"): ...`` adds to a stage."""

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0


class Compressor:
    """Base of all compressors: a config plus ``compress``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    config_class: ClassVar[type[CompressorConfig]] = CompressorConfig

    def __init__(self, config: CompressorConfig | None = None, **overrides: Any):
        if config is None:
            config = self.config_class.from_dict(overrides)
        elif not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        elif overrides:
            config = config.replace(**overrides)
        self.config = config

    def compress(self, prompt: Any, **kwargs: Any):
        raise NotImplementedError

    def __call__(self, prompt: Any, **kwargs: Any):
        return self.compress(prompt, **kwargs)

    def compress_batch(self, prompts: Iterable[Any], *, progress: bool = False, **kwargs: Any) -> list:
        """Compress many prompts (methods override this to batch the model work across prompts)."""
        from tqdm.auto import tqdm

        prompts = list(prompts)
        return [self.compress(p, **kwargs) for p in tqdm(prompts, disable=not progress, desc=self.name)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
