"""Interleaved image-text prompts: one embedded sequence, chunking that never splits an image, QA tasks, and the
``interleaved`` compressor that turns the whole compressible part into one shared set of soft tokens."""
from __future__ import annotations

from .chunking import chunk_sequence, chunk_spans, pack_blocks
from .embedding import (
    ImageEmbedder,
    SequencePlan,
    scatter_image_tokens,
    InterleavedBatch,
    InterleavedEmbedder,
    InterleavedSequence,
    Layout,
    pad_sequences,
    split_layout,
    split_trailing_question,
)

from .interleaved import InterleavedCompressor, InterleavedConfig  # noqa: E402  (registers "interleaved")
from . import training  # noqa: E402,F401  registers the multimodal family's training task

__all__ = [
    "InterleavedCompressor",
    "InterleavedConfig",
    "ImageEmbedder",
    "InterleavedBatch",
    "InterleavedEmbedder",
    "InterleavedSequence",
    "Layout",
    "chunk_sequence",
    "chunk_spans",
    "pack_blocks",
    "pad_sequences",
    "scatter_image_tokens",
    "SequencePlan",
    "split_layout",
    "split_trailing_question",
]
