"""Attention-side baselines: compress the KV cache instead of the prompt.

- :class:`SlidingWindowPress`, :class:`StreamingLLMPress` (attention sinks + recent window),
- :class:`KnormPress` (keys' L2 norm), :class:`SnapKVPress` (observation-window attention),

all on the transformers ``DynamicCache`` through forward hooks (see :mod:`.base`), plus :func:`prefill` /
:func:`generate_from_cache` (from :mod:`mmcompress.models.decoding`) to decode after a shortened cache with the right
positions. As QA systems of the evaluation harness they live in :mod:`mmcompress.evaluation.kvcache_systems`.
"""
from ..models.decoding import CachedContext, Generation, generate_from_cache, left_pad, prefill
from .base import PRESSES, KVPress, attention_layers, create_press, list_presses, register_press
from .knorm import KnormPress
from .snapkv import SnapKVPress
from .streaming import SlidingWindowPress, StreamingLLMPress

__all__ = [
    "PRESSES", "CachedContext", "Generation", "KVPress", "KnormPress", "SlidingWindowPress", "SnapKVPress",
    "StreamingLLMPress", "attention_layers", "create_press", "generate_from_cache", "left_pad", "list_presses",
    "prefill", "register_press",
]
