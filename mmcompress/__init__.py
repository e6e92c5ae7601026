"""mmcompress: prompt compression for LLMs and VLMs (hard, soft and multimodal methods on one core)."""
from __future__ import annotations

from . import hard  # noqa: F401  registers the hard methods
# --- Vision: encoders, adapters, visual-token reductions (registered as family "vision") ---
from . import vision  # noqa: F401,E402
# --- end Vision ---
from .api import compress
from .budget import BudgetPlan, plan_budget, select_under_budget, topk_indices
from .compressor import Compressor, CompressorConfig
from .hard.base import HardCompressor, HardConfig, SegmentOutcome
from .errors import (
    BudgetError,
    ConfigError,
    ImageError,
    InputFileError,
    InvalidPromptError,
    MMCompressError,
    ModelNotFoundError,
    UnknownCompressorError,
)
from .factory import add_config_path, create_compressor, list_configs
from .models import load_language_model, load_tokenizer
from .prompt import ImageSegment, Policy, Prompt, Role, TextSegment
from .registry import Registry, get_compressor_class, list_compressors, register_compressor
from .results import CompressedPrompt, SegmentSelection

# soft compression (icae, kv, and the SoftCompressor base others build on)
from . import soft  # noqa: E402,F401  registers the soft methods
from .results import SoftPrompt, SoftSegment  # noqa: E402
from .soft import SoftCompressor, SoftConfig  # noqa: E402
from .pipeline import Pipeline, PipelineConfig  # noqa: E402  hard-then-soft and per-segment composition

# GIST, AutoCompressor and attention-side baselines (KV-cache presses)
from . import kvcache  # noqa: E402,F401
from .kvcache import KVPress, create_press, list_presses  # noqa: E402

# --- interleaved image-text (multimodal family): registers the "interleaved" compressor and training task
from . import multimodal  # noqa: F401,E402

__version__ = "0.1.0"

__all__ = [
    "KVPress",
    "create_press",
    "list_presses",
    "Pipeline",
    "PipelineConfig",
    "SoftCompressor",
    "SoftConfig",
    "SoftPrompt",
    "SoftSegment",
    "BudgetError",
    "BudgetPlan",
    "CompressedPrompt",
    "Compressor",
    "CompressorConfig",
    "ConfigError",
    "HardCompressor",
    "HardConfig",
    "ImageError",
    "ImageSegment",
    "InputFileError",
    "InvalidPromptError",
    "MMCompressError",
    "ModelNotFoundError",
    "Policy",
    "Prompt",
    "Registry",
    "Role",
    "SegmentOutcome",
    "SegmentSelection",
    "TextSegment",
    "UnknownCompressorError",
    "add_config_path",
    "compress",
    "create_compressor",
    "get_compressor_class",
    "list_compressors",
    "list_configs",
    "load_language_model",
    "load_tokenizer",
    "plan_budget",
    "register_compressor",
    "select_under_budget",
    "topk_indices",
]
