"""The press abstraction (after NVIDIA kvpress): a forward hook on every attention layer that, right after the
prefill writes a layer's keys and values into the transformers ``DynamicCache``, replaces them with a budgeted subset.

A press keeps exactly ``n_kept(T)`` entries per layer and head (``rate`` of the ``T`` prefilled tokens, or
``target_entries``). Kept keys carry the RoPE of their original positions, so decoding continues at position ``T``
(see :mod:`mmcompress.models.decoding`), not at the cache length.

Why not kvpress itself: kvpress 0.5.5 pins ``transformers>=4.56,<5.3`` and pulls in ``datasets``/``pandas``; this
project runs on transformers 5.2x, whose attention takes ``cache=`` and no ``cache_position``. The presses here are
the same algorithms on the same hook design, written against that API.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry

PRESSES: Registry[Any] = Registry("kv press", name_attribute="name")


def register_press(name: str):
    """Class decorator: make a press available to :func:`create_press` under ``name``."""
    return PRESSES.register(name)


def create_press(name: str, **settings: Any) -> KVPress:
    cls = PRESSES.get(name)
    unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"press {name!r} has no setting(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
    return cls(**settings)


def list_presses() -> list[str]:
    return PRESSES.names()


def attention_layers(model: Any) -> list[Any]:
    """The self-attention modules of a decoder-only transformers model, in layer order."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    base = getattr(base, "language_model", base)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no decoder layers with self_attn; presses support Llama-style models")
    modules = [getattr(layer, "self_attn", None) for layer in layers]
    if any(m is None or not hasattr(m, "layer_idx") for m in modules):
        raise ConfigError(f"{type(model).__name__}'s layers lack self_attn.layer_idx; presses support Llama-style models")
    return modules


@dataclass
class KVPress:
    """Base press: ``rate`` is the fraction of prefilled KV entries kept; ``target_entries`` (if set) overrides it.

    Subclasses implement :meth:`score` (higher = keep); the press keeps the top ``n_kept`` entries per head, in their
    original order.
    """

    name: ClassVar[str] = ""
    rate: float = 0.5
    target_entries: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < float(self.rate) <= 1.0:
            raise ConfigError(f"rate is the fraction of KV entries kept and must be in (0, 1], got {self.rate}")
        if self.target_entries is not None and int(self.target_entries) < 1:
            raise ConfigError(f"target_entries must be >= 1, got {self.target_entries}")

    def n_kept(self, length: int) -> int:
        wanted = int(self.target_entries) if self.target_entries is not None else int(round(length * float(self.rate)))
        return max(1, min(length, wanted))

    def to_dict(self) -> dict[str, Any]:
        return {"press": self.name, **asdict(self)}

    # ---------------------------------------------------------------------------------------------- algorithm
    def score(self, module: Any, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              kwargs: dict[str, Any]) -> torch.Tensor:
        """``(B, H_kv, T)`` importance of each cached entry (post-RoPE keys/values are ``(B, H_kv, T, d)``)."""
        raise NotImplementedError

    def compress(self, module: Any, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        length = keys.shape[-2]
        kept = self.n_kept(length)
        if kept >= length:
            return keys, values
        scores = self.score(module, hidden_states, keys, values, kwargs)
        indices = scores.topk(kept, dim=-1).indices.sort(dim=-1).values  # keep the original order
        gather = indices.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()

    # ---------------------------------------------------------------------------------------------- plumbing
    def forward_hook(self, module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        if cache is None or hidden_states is None:
            return output
        layer = cache.layers[module.layer_idx]
        q_len = hidden_states.shape[1]
        if getattr(layer, "keys", None) is None or layer.keys.shape[-2] != q_len:
            return output  # not a prefill from an empty cache (decoding, or a chunk after the first)
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None and attention_mask.ndim == 4 and not bool(_all_attend(attention_mask)):
            raise ConfigError("presses need unpadded inputs (every row the same length, no padding); "
                              "prefill rows one at a time or group them by length")
        layer.keys, layer.values = self.compress(module, hidden_states, layer.keys, layer.values, kwargs)
        return output

    @contextmanager
    def __call__(self, model: Any):
        """``with press(model): model(input_ids, cache=DynamicCache())`` compresses the prefill; hooks are always removed."""
        handles = []
        try:
            for module in attention_layers(model):
                handles.append(module.register_forward_hook(self.forward_hook, with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _all_attend(mask: torch.Tensor) -> torch.Tensor:
    """True if a 4-D mask (bool or additive) is exactly causal without padding, i.e. its lower triangle attends."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    q, k = allowed.shape[-2:]
    lower = torch.ones(q, k, dtype=torch.bool, device=mask.device).tril(k - q)
    return (allowed | ~lower).all()
