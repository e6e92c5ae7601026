"""Chunk long interleaved sequences for a soft encoder with a fixed window, never splitting an image.

ICAE and 500xCompressor compress long text segment by segment (e.g. 512 tokens -> 128 slots each) and concatenate the
slots. Interleaved input is chunked the same way, with one extra rule: an image's K_img adapter tokens are one block,
so a chunk border lies only between two text tokens, between a text token and an image, or between two images.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .embedding import InterleavedSequence


def pack_blocks(block_lengths: Sequence[int], max_len: int) -> list[tuple[int, int]]:
    """Greedy packing of consecutive blocks into chunks of at most ``max_len`` positions.

    Returns ``(start, end)`` position spans. A block longer than ``max_len`` (an image with more adapter tokens than
    the window) cannot be placed without splitting it, so it is an error.
    """
    if max_len < 1:
        raise ConfigError(f"chunk length must be >= 1, got {max_len}")
    chunks: list[tuple[int, int]] = []
    start = pos = 0
    for n in block_lengths:
        if n > max_len:
            raise ConfigError(
                f"an image takes {n} positions but chunks hold at most {max_len}; raise the chunk length or reduce "
                "the image's tokens (a smaller adapter output or a vision reduction)"
            )
        if pos + n - start > max_len:
            chunks.append((start, pos))
            start = pos
        pos += n
    if pos > start:
        chunks.append((start, pos))
    return chunks


def chunk_spans(seq: InterleavedSequence, max_len: int) -> list[tuple[int, int]]:
    """``(start, end)`` spans of at most ``max_len`` positions whose borders never fall inside an image."""
    return pack_blocks([end - start for start, end in seq.blocks()], max_len)


def chunk_sequence(seq: InterleavedSequence, max_len: int) -> list[InterleavedSequence]:
    """The sequence cut into chunks (see :func:`chunk_spans`)."""
    return [seq.slice(a, b) for a, b in chunk_spans(seq, max_len)]


def num_chunks(length: int, max_len: int) -> int:
    return max(1, -(-length // max_len))
