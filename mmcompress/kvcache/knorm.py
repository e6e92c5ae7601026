"""KnormPress (Devoto et al. 2024, kvpress ``KnormPress``): keys with a small L2 norm draw the most attention, so
keep the entries whose keys have the lowest norm."""
from __future__ import annotations

from dataclasses import dataclass

from .base import KVPress, register_press


@register_press("knorm")
@dataclass
class KnormPress(KVPress):
    def score(self, module, hidden_states, keys, values, kwargs):
        return -keys.norm(dim=-1)
