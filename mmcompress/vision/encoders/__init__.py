"""Image encoders behind one interface (:class:`VisionEncoder` -> :class:`EncoderOutput`), a registry by backend,
and :func:`create_encoder` for specs such as ``"open_clip:ViT-B-32@laion2b_s34b_b79k"``, ``"hf_clip:openai/...``",
``"hf_siglip:/path"``."""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ...registry import Registry
from .base import EncoderOutput, VisionEncoder, attention_from_projections
from .hf import HFVisionEncoder, LlavaTowerEncoder
from .open_clip_encoder import TOOLKIT_CONFIGS, OpenCLIPEncoder, register_open_clip_config

ENCODERS: Registry[Any] = Registry("image encoder")
ENCODERS.register("open_clip")(OpenCLIPEncoder)
ENCODERS.register("hf_clip")(lambda name, **kw: HFVisionEncoder.from_pretrained(name, kind="clip", **kw))
ENCODERS.register("hf_siglip")(lambda name, **kw: HFVisionEncoder.from_pretrained(name, kind="siglip", **kw))
ENCODERS.register("hf")(lambda name, **kw: HFVisionEncoder.from_pretrained(name, kind="auto", **kw))
ENCODERS.register("llava")(lambda name, **kw: _llava_tower(name, **kw))


def _llava_tower(path: str, **kw: Any) -> LlavaTowerEncoder:
    from ...models.llava import load_llava

    vlm = load_llava(path, **kw)
    return LlavaTowerEncoder(vlm.model, image_processor=vlm.image_processor)


def create_encoder(spec: str | VisionEncoder, **kwargs: Any) -> VisionEncoder:
    """``"backend:name[@pretrained]"`` -> an encoder. Backends: open_clip, hf_clip, hf_siglip, hf, llava.

    A bare name is an open_clip model. ``@tag`` sets open_clip's ``pretrained`` (omitted: random init).
    """
    if isinstance(spec, VisionEncoder):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"an encoder spec is a string like 'open_clip:ViT-B-16', got {spec!r}")
    backend, _, name = spec.partition(":") if ":" in spec and not spec.startswith(("/", ".")) else ("open_clip", "", spec)
    if backend in ("hf-hub", "local-dir"):  # open_clip's own schemas
        backend, name = "open_clip", spec
    if backend == "open_clip" and "@" in name:
        name, _, tag = name.partition("@")
        kwargs.setdefault("pretrained", tag)
    return ENCODERS.get(backend)(name, **kwargs)


__all__ = [
    "ENCODERS",
    "EncoderOutput",
    "HFVisionEncoder",
    "LlavaTowerEncoder",
    "OpenCLIPEncoder",
    "TOOLKIT_CONFIGS",
    "VisionEncoder",
    "attention_from_projections",
    "create_encoder",
    "register_open_clip_config",
]
