"""A picture of a visual-token reduction: the image with its patch grid, dropped patches darkened, kept patches as
they are, and patches that absorbed others by merging outlined (``mmcompress compress --image-overlay out.png``).

    overlay = patch_overlay(image, result.indices[0], result.sizes[0], result.num_patches)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

DROPPED_DIM = 0.25  # dropped patches keep a quarter of their brightness
KEPT_OUTLINE = (40, 200, 40)  # green: a kept patch standing for itself
MERGED_OUTLINE = (255, 140, 0)  # orange: a kept patch that other patches were merged into


def patch_overlay(image: Any, indices: Any, sizes: Any, num_patches: int, side_px: int = 448):
    """``image`` (anything :func:`~mmcompress.image_io.load_images` reads) resized to ``side_px`` square, with the
    ``sqrt(num_patches)`` grid: patches not in ``indices`` darkened; kept ones outlined, orange where ``sizes > 1``.
    Returns a PIL image."""
    from PIL import Image, ImageDraw

    from ..errors import ConfigError
    from ..image_io import load_images

    grid = math.isqrt(int(num_patches))
    if grid * grid != int(num_patches):
        raise ConfigError(f"the overlay needs a square patch grid; {num_patches} patches is not a square")
    cell = max(1, side_px // grid)
    side = cell * grid
    picture = load_images([image])[0].convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    pixels = np.asarray(picture, dtype=np.float32)
    kept = np.zeros(grid * grid, dtype=bool)
    indices, sizes = np.asarray(indices, dtype=np.int64).reshape(-1), np.asarray(sizes).reshape(-1)
    kept[indices] = True
    # a per-pixel kept mask from the per-patch one: each patch covers a cell x cell block
    mask = np.kron(kept.reshape(grid, grid), np.ones((cell, cell), dtype=bool))
    pixels[~mask] *= DROPPED_DIM
    out = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for index, size in zip(indices.tolist(), sizes.tolist()):
        row, col = divmod(index, grid)
        colour = MERGED_OUTLINE if size > 1 else KEPT_OUTLINE
        draw.rectangle([col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1], outline=colour, width=2)
    return out


def overlay_strip(images: list[Any], result: Any, side_px: int = 448):
    """One overlay per image of a :class:`~mmcompress.vision.reduction.base.VisualTokens` result, side by side."""
    from PIL import Image

    tiles = [patch_overlay(img, result.indices[i].cpu(), result.sizes[i].cpu(), result.num_patches, side_px)
             for i, img in enumerate(images)]
    strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width
    return strip
