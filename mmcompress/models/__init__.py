"""Model loading: causal LMs, tokenizers and the embedded offline defaults."""
from .loading import (
    ALIASES,
    DEFAULT_MODEL,
    LanguageModel,
    ModelAlias,
    cache_dir,
    context_window,
    load_language_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_model,
)

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "LanguageModel",
    "ModelAlias",
    "cache_dir",
    "context_window",
    "load_language_model",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]
