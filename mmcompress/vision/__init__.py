"""Vision: image encoders, vision-language adapters, training-free visual-token reduction, VLM integration.

- :mod:`.encoders`: open_clip / HF CLIP / SigLIP / LLaVA towers -> patch tokens ``[B, N, D]`` (+ CLS, attention).
- :mod:`.adapters`: ``[B, N, Dv] -> [B, K, D_llm]`` modules (MLP, Perceiver resampler, Q-Former, pooling).
- :mod:`.reduction`: training-free reductions (VisionZip, PruMerge, ToMe, FastV, baselines).
- :mod:`.runners`: :func:`create_vlm`, one runner for the HF VLM families (docs/vision.md).
"""
from .adapters import (ADAPTERS, AdapterConfig, MLPProjector, PerceiverResampler, PoolAdapter, QFormer,
                       VisionAdapter, create_adapter, pool_tokens)
from . import reduction  # noqa: F401  registers the reductions as compressors
from . import training  # noqa: F401  registers the vision family's training task
from .encoders import (ENCODERS, EncoderOutput, HFVisionEncoder, LlavaTowerEncoder, OpenCLIPEncoder, VisionEncoder,
                       create_encoder, register_open_clip_config)

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "ENCODERS",
    "EncoderOutput",
    "HFVisionEncoder",
    "LlavaTowerEncoder",
    "MLPProjector",
    "OpenCLIPEncoder",
    "PerceiverResampler",
    "PoolAdapter",
    "QFormer",
    "VisionAdapter",
    "VisionEncoder",
    "create_adapter",
    "create_encoder",
    "pool_tokens",
    "register_open_clip_config",
]
from .reduction import (FastV, PoolReduction, PruMerge, RandomReduction, StridedReduction, ToMe, VisionZip,
                        VisualReduction, VisualTokens)

__all__ += ["FastV", "PoolReduction", "PruMerge", "RandomReduction", "StridedReduction", "ToMe", "VisionZip",
            "VisualReduction", "VisualTokens"]
from .runners import create_vlm  # noqa: E402

__all__ += ["create_vlm"]
