"""Vision-language adapters: small modules mapping patch tokens ``[B, N, Dv]`` to ``[B, K, D_llm]``.

Each adapter has a config dataclass (``in_dim``, ``out_dim``, ``tokens`` = K and its own knobs), is registered by
name in :data:`ADAPTERS`, and saves/loads like a Hugging Face model::

    adapter = create_adapter("perceiver", in_dim=768, out_dim=576, tokens=64)
    adapter.save_pretrained("out/resampler")        # adapter_config.json + model.safetensors
    adapter = VisionAdapter.from_pretrained("out/resampler")

Adapters train with the shared trainer (:mod:`mmcompress.training`): the default ``training_step`` regresses the
output on ``batch["target"]`` (feature distillation); a VLM (e.g. :class:`~mmcompress.vision.small_vlm.SmallVLM`)
trains them through a language model instead.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...config_base import Config
from ...errors import ConfigError
from ...registry import Registry

ADAPTERS: Registry[Any] = Registry("vision adapter", name_attribute="name")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "model.safetensors"


def register_adapter(name: str):
    return ADAPTERS.register(name)


@dataclass
class AdapterConfig(Config):
    """Fields every adapter has: input width ``in_dim`` (vision), output width ``out_dim`` (LLM embeddings) and the
    number of output tokens ``tokens`` (K; ``None`` keeps one token per patch)."""

    in_dim: int = 768
    out_dim: int = 576
    tokens: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("in_dim", "out_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.tokens is not None and int(self.tokens) < 1:
            raise ConfigError(f"tokens must be a positive integer (or None for one per patch), got {self.tokens}")


    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VisionAdapter(nn.Module):
    """Base class: ``forward(patch_tokens [B, N, Dv], **conditioning) -> [B, K, D_llm]``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig

    def __init__(self, config: AdapterConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = self.config_class.from_dict(overrides)
        elif overrides:
            config = self.config_class.from_dict({**config.to_dict(), **overrides})
        self.config = config

    def num_output_tokens(self, num_patches: int) -> int:
        return num_patches if self.config.tokens is None else int(self.config.tokens)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise ConfigError(f"{self.name} adapter takes patch tokens [B, N, D]; got "
                              f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[-1] != self.config.in_dim:
            raise ConfigError(f"{self.name} adapter was built for {self.config.in_dim}-d patch tokens, got {x.shape[-1]}-d "
                              "(set in_dim to the encoder's hidden size)")

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Feature regression: mean squared error between ``self(batch["patch_tokens"])`` and ``batch["target"]``."""
        out = self(batch["patch_tokens"])
        loss = nn.functional.mse_loss(out.float(), batch["target"].float())
        return {"loss": loss}

    # ---------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps({"adapter": self.name, **self.config.to_dict()}, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> VisionAdapter:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(f"{path} has no {CONFIG_FILE}; it is not a saved adapter")
        meta = json.loads((path / CONFIG_FILE).read_text())
        adapter_cls = ADAPTERS.get(meta.pop("adapter"))
        if cls is not VisionAdapter and not issubclass(adapter_cls, cls):
            raise ConfigError(f"{path} holds a {adapter_cls.__name__}, not a {cls.__name__}")
        adapter = adapter_cls(adapter_cls.config_class.from_dict(meta))
        adapter.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return adapter.to(device)


def create_adapter(name: str, **config: Any) -> VisionAdapter:
    """Build a registered adapter (``mlp``, ``perceiver``, ``qformer``, ``pool``) from config fields."""
    return ADAPTERS.get(name)(**config)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: float = 4.0):
        inner = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Linear(inner, dim))
