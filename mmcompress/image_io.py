"""Turning whatever a user calls an image into an RGB PIL image, with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ImageError


def to_pil_rgb(image: Any):
    """PIL image, ``(H, W)``/``(H, W, C)`` array, ``(C, H, W)``/``(H, W, C)`` tensor or a path -> RGB PIL image.

    Grayscale, palette and RGBA inputs are converted to RGB (alpha is composited on white, as viewers show it).
    Float arrays are read as values in [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"cannot read image {path}: {e}") from None
    elif not isinstance(image, Image.Image):
        image = Image.fromarray(_to_uint8_hwc(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _to_uint8_hwc(array: Any):
    import numpy as np

    try:
        import torch

        if isinstance(array, torch.Tensor):
            array = array.detach().cpu()
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
                array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
            array = array.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if not isinstance(array, np.ndarray):
        raise ImageError(
            f"cannot use {type(array).__name__} as an image; pass a PIL image, an array, a tensor or a file path"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be (H, W), (H, W, 3|4) or (C, H, W); got shape {array.shape}")
    if array.size == 0:
        raise ImageError("the image is empty")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255)
    return array.astype(np.uint8)
