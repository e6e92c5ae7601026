"""Adapters [B, N, Dv] -> [B, K, D]: shapes, text conditioning, nested latents, save/load round trips, and that an
adapter trained with the shared trainer learns a toy mapping on CPU."""
from __future__ import annotations

import pytest
import torch

from mmcompress.errors import BudgetError, ConfigError
from mmcompress.vision.adapters import ADAPTERS, VisionAdapter, create_adapter, pool_tokens

CASES = {
    "mlp": ({}, 64),
    "perceiver": ({"tokens": 8, "heads": 2, "dim_head": 16, "depth": 1}, 8),
    "qformer": ({"tokens": 8, "width": 32, "heads": 2, "text_dim": 20}, 8),
    "pool": ({"tokens": 4}, 4),
}


def test_every_adapter_is_registered():
    assert set(CASES) <= set(ADAPTERS.names())


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_and_save_load(name, tmp_path):
    kw, k = CASES[name]
    torch.manual_seed(0)
    adapter = create_adapter(name, in_dim=48, out_dim=24, **kw).eval()
    x = torch.randn(3, 64, 48)
    y = adapter(x)
    assert y.shape == (3, k, 24)
    adapter.save_pretrained(tmp_path / name)
    loaded = VisionAdapter.from_pretrained(tmp_path / name).eval()
    assert type(loaded) is type(adapter) and loaded.config == adapter.config
    torch.testing.assert_close(loaded(x), y)
    with pytest.raises(ConfigError, match="48-d"):
        adapter(torch.randn(1, 64, 40))


def test_qformer_text_conditioning_changes_output_and_respects_mask():
    torch.manual_seed(0)
    q = create_adapter("qformer", in_dim=16, out_dim=8, tokens=4, width=32, heads=2, text_dim=12).eval()
    x, text = torch.randn(1, 9, 16), torch.randn(1, 3, 12)
    plain, cond = q(x), q(x, text_embeds=text)
    assert not torch.allclose(plain, cond)
    # masked-out text positions do not matter
    a = q(x, text_embeds=torch.cat([text, torch.randn(1, 2, 12)], 1), text_mask=torch.tensor([[1, 1, 1, 0, 0]]))
    torch.testing.assert_close(a, cond, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="text_embeds"):
        q(x, text_embeds=torch.randn(1, 3, 5))


def test_perceiver_nested_latents():
    torch.manual_seed(0)
    r = create_adapter("perceiver", in_dim=16, out_dim=8, tokens=16, heads=2, dim_head=8).eval()
    x = torch.randn(2, 25, 16)
    assert r(x, tokens=4).shape == (2, 4, 8)
    with pytest.raises(BudgetError, match="16 latents"):
        r(x, tokens=17)


def test_pool_tokens_is_grid_average():
    x = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid with values 0..15
    pooled = pool_tokens(x, 4)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # mean of each 2x2 block
    assert pool_tokens(x, 1).item() == 7.5
    assert pool_tokens(x, 3).shape == (1, 3, 1)  # not a square: adaptive along the sequence
    with pytest.raises(BudgetError, match="between 1 and 16"):
        pool_tokens(x, 17)


def test_adapter_learns_toy_mapping_with_shared_trainer(tmp_path):
    """Targets are a fixed function of the patches: output token j is its own random linear map of the mean patch.
    A trained adapter must get far below the loss of predicting the mean target. 300 steps: about 12 s on an idle
    2-core CPU (no wall-clock assertion: the shared CI machine may be loaded)."""
    from mmcompress.training import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 512, 16, 8
    patches = torch.randn(n, 16, d_in, generator=g)
    w = torch.randn(4, d_in, d_out, generator=g)
    target = torch.einsum("nd,kde->nke", patches.mean(1), w) * 4  # [n, 4, d_out]
    data = [{"patch_tokens": p, "target": t} for p, t in zip(patches, target)]
    torch.manual_seed(0)
    adapter = create_adapter("perceiver", in_dim=d_in, out_dim=d_out, tokens=4, heads=2, dim_head=16, depth=1)
    baseline = torch.nn.functional.mse_loss(target, target.mean(0, keepdim=True).expand_as(target)).item()
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=300, batch_size=32, lr=3e-3, log_every=50,
                      progress=False, warmup_steps=20)
    result = Trainer(adapter, cfg, data, collate_fn=torch.utils.data.default_collate).train()
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(adapter(patches), target).item()
    assert result.steps == 300
    assert final < 0.3 * baseline, (final, baseline)
