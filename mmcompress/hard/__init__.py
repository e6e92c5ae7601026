"""Hard methods: drop or rewrite tokens and return shorter text. One method per file."""
from .llmlingua2 import LLMLingua2, LLMLingua2Config
from .random_drop import RandomConfig, RandomDrop
from .selective_context import SelectiveContext, SelectiveContextConfig
from .truncate import Truncate, TruncateConfig

__all__ = [
    "LLMLingua2",
    "LLMLingua2Config",
    "RandomConfig",
    "RandomDrop",
    "SelectiveContext",
    "SelectiveContextConfig",
    "Truncate",
    "TruncateConfig",
]
