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


def load_images(images: Any) -> list:
    """One image or a list of images (any form :func:`to_pil_rgb` takes) -> a list of RGB PIL images."""
    if images is None:
        raise ImageError("no image was given")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("the list of images is empty")
        return [to_pil_rgb(im) for im in images]
    return [to_pil_rgb(images)]


# CLIP's normalisation (open_clip and HF CLIP image processors use the same numbers)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pixel_values(images: Any, size: int | tuple[int, int], mean=CLIP_MEAN, std=CLIP_STD):
    """Images -> a normalised float tensor ``[B, 3, H, W]``: resize the short side to ``size``, centre crop.

    This is the CLIP evaluation transform; encoders with their own processor (open_clip, HF) use that instead.
    """
    import numpy as np
    import torch
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    out = []
    for im in load_images(images):
        scale = max(h / im.height, w / im.width)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    x = torch.stack(out)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
