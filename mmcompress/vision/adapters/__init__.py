"""Vision-language adapters ``[B, N, Dv] -> [B, K, D_llm]``: MLP projector (LLaVA), Perceiver resampler
(Flamingo), Q-Former (BLIP-2 / InstructBLIP), average pooling (M3). One per file, registered in ``ADAPTERS``."""
from .base import ADAPTERS, AdapterConfig, VisionAdapter, create_adapter, register_adapter
from .mlp import MLPConfig, MLPProjector
from .perceiver import PerceiverConfig, PerceiverResampler
from .pool import PoolAdapter, PoolConfig, pool_tokens
from .qformer import QFormer, QFormerConfig

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "MLPConfig",
    "MLPProjector",
    "PerceiverConfig",
    "PerceiverResampler",
    "PoolAdapter",
    "PoolConfig",
    "QFormer",
    "QFormerConfig",
    "VisionAdapter",
    "create_adapter",
    "pool_tokens",
    "register_adapter",
]
