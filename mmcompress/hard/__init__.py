"""Hard methods: drop or rewrite tokens and return shorter text. One method per file."""
from .llmlingua import LLMLingua, LLMLinguaConfig
from .longllmlingua import LongLLMLingua, LongLLMLinguaConfig, recover
from .llmlingua2 import LLMLingua2, LLMLingua2Config
from .random_drop import RandomConfig, RandomDrop
from .selective_context import SelectiveContext, SelectiveContextConfig
from .truncate import Truncate, TruncateConfig

__all__ = [
    "LLMLingua",
    "LLMLinguaConfig",
    "LongLLMLingua",
    "LongLLMLinguaConfig",
    "recover",
    "LLMLingua2",
    "LLMLingua2Config",
    "RandomConfig",
    "RandomDrop",
    "SelectiveContext",
    "SelectiveContextConfig",
    "Truncate",
    "TruncateConfig",
]
