"""``compact_lora``: a saved LoRA adapter refactored to a lower rank (what ships smaller weights and what a recipe
stage with a lower ``lora_r`` starts from)."""
from __future__ import annotations

import pytest
import torch

from mmcompress.models.lora import compact_lora

A, B = "layers.0.q_proj.lora_A.default.weight", "layers.0.q_proj.lora_B.default.weight"


def saved(rank_of_update: int, r: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, 12, generator=g, dtype=torch.float64)
    b = torch.randn(10, r, generator=g, dtype=torch.float64)
    b[:, rank_of_update:] = 0  # the update B @ A has rank ``rank_of_update``
    return {A: a, B: b, "markers": torch.randn(3, 12, generator=g, dtype=torch.float64),
            "layers.0.q_proj.lora_A.decoder.weight": a.clone()}


def test_an_update_of_lower_rank_is_kept_exactly_with_its_scale_folded_in():
    weights = saved(rank_of_update=2)
    out, kept = compact_lora(weights, "default", 2, scale=3.0)
    assert out[A].shape == (2, 12) and out[B].shape == (10, 2)
    torch.testing.assert_close(out[B] @ out[A], 3.0 * weights[B] @ weights[A])
    assert kept == pytest.approx(1.0)
    # other tensors and other adapters pass through untouched
    assert out["markers"] is weights["markers"]
    assert out["layers.0.q_proj.lora_A.decoder.weight"] is weights["layers.0.q_proj.lora_A.decoder.weight"]


def test_a_cut_gives_the_best_approximation_and_reports_the_energy_kept():
    weights = saved(rank_of_update=4)
    update = weights[B] @ weights[A]
    s = torch.linalg.svdvals(update)
    out, kept = compact_lora(weights, "default", 1)
    error = torch.linalg.matrix_norm(out[B] @ out[A] - update)
    assert error.item() == pytest.approx(s[1:].square().sum().sqrt().item(), rel=1e-9)  # Eckart-Young
    assert kept == pytest.approx((s[0] ** 2 / s.square().sum()).item())
    # the factors share the singular values evenly, so neither dwarfs the other in a low-precision store
    assert torch.linalg.matrix_norm(out[A]).item() == pytest.approx(torch.linalg.matrix_norm(out[B]).item())


def test_a_rank_above_the_update_pads_zero_directions_and_bad_requests_are_refused():
    weights = saved(rank_of_update=4, r=4)
    out, _ = compact_lora({A: weights[A][:, :3], B: weights[B]}, "default", 4)  # the update is 10 x 3
    assert out[A].shape == (4, 3) and out[B].shape == (10, 4)
    with pytest.raises(ValueError, match="rank"):
        compact_lora(weights, "default", 0)
    with pytest.raises(ValueError, match="no LoRA adapter 'other'"):
        compact_lora(weights, "other", 2)
