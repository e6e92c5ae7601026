"""Hard methods: drop or rewrite tokens and return shorter text. One method per file."""
from . import training  # noqa: F401  registers the hard family's training tasks
from .llmlingua import LLMLingua, LLMLinguaConfig
from .llmlingua2 import LLMLingua2, LLMLingua2Config
from .longllmlingua import LongLLMLingua, LongLLMLinguaConfig, recover
from .random_drop import RandomConfig, RandomDrop
from .selective_context import SelectiveContext, SelectiveContextConfig
from .truncate import Truncate, TruncateConfig

__all__ = [
    "LLMLingua",
    "LLMLingua2",
    "LLMLingua2Config",
    "LLMLinguaConfig",
    "LongLLMLingua",
    "LongLLMLinguaConfig",
    "RandomConfig",
    "RandomDrop",
    "SelectiveContext",
    "SelectiveContextConfig",
    "Truncate",
    "TruncateConfig",
    "recover",
]
