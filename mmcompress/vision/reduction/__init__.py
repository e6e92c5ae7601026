"""Training-free visual-token reduction, registered as compressors of family ``"vision"``: VisionZip, PruMerge,
ToMe, FastV (inside the LLM), and the random, strided and pooling baselines. One method per file."""
from .base import ReductionConfig, ReductionResult, VisualReduction, VisualTokens
from .fastv import FastV, FastVConfig, fastv_pruning, find_decoder_layers
from .pooling import PoolReduction
from .prumerge import PruMerge, PruMergeConfig, iqr_outliers
from .random_select import RandomReduction
from .strided import StridedReduction, strided_indices
from .tome import ToMe, bipartite_merge
from .visionzip import VisionZip, VisionZipConfig

__all__ = [
    "FastV",
    "FastVConfig",
    "PoolReduction",
    "PruMerge",
    "PruMergeConfig",
    "RandomReduction",
    "ReductionConfig",
    "ReductionResult",
    "StridedReduction",
    "ToMe",
    "VisionZip",
    "VisionZipConfig",
    "VisualReduction",
    "VisualTokens",
    "bipartite_merge",
    "fastv_pruning",
    "find_decoder_layers",
    "iqr_outliers",
    "strided_indices",
]
