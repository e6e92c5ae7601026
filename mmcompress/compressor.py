"""Base classes every compressor builds on.

- :class:`CompressorConfig`: a small dataclass of the method's knobs; YAML configs and ``**overrides`` fill it.
- :class:`Compressor`: ``compress(prompt) -> result``, ``compress_batch(prompts)``, and ``__call__``.

Each family's base builds on these: ``hard/base.py`` (token dropping), ``soft/base.py``, ``vision/reduction/base.py``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from .budget import check_rate, check_target_tokens
from .config_base import Config
from .errors import ConfigError, InvalidPromptError


@dataclass
class CompressorConfig(Config):
    """Base of every method's config dataclass: no fields of its own, only reading, checking and copying. Fields
    are type-checked on construction and unknown keys refused (:mod:`mmcompress.config_base`).

    The budget vocabulary: a family that honours a budget by tokens has ``rate`` (fraction of tokens kept) and
    ``target_tokens`` (overrides it) through :class:`BudgetConfig`; a family whose ratio is fixed otherwise (soft
    methods: ``chunk_tokens / num_slots``) does not have them. Every family reports its achieved ``rate`` / ``ratio``
    on its result.
    """

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

        prompts = batch_list(prompts)
        return [self.compress(p, **kwargs) for p in tqdm(prompts, disable=not progress, desc=self.name)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def batch_list(prompts: Any) -> list:
    """The prompts of a batch as a list; one prompt (a str, a Prompt, chat messages) is an error, not a batch of its
    characters or messages."""
    from .prompt import Prompt

    if isinstance(prompts, (str, bytes, Prompt, dict)) or (
            isinstance(prompts, Sequence) and prompts and all(isinstance(m, dict) for m in prompts)):
        raise InvalidPromptError(f"compress_batch takes a list of prompts, got one {type(prompts).__name__} prompt; "
                                 "use compress(prompt), or compress_batch([prompt])")
    try:
        return list(prompts)
    except TypeError:
        raise InvalidPromptError(f"compress_batch takes a list of prompts, got {type(prompts).__name__}") from None
