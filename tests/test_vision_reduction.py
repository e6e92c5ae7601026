"""Training-free visual-token reductions: exact budgets on real images, what each method keeps and merges, the
registry/YAML/compress() path, and bad budgets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_file
from mmcompress import create_compressor, list_compressors
from mmcompress.errors import BudgetError, ConfigError, InvalidPromptError
from mmcompress.vision.encoders import create_encoder
from mmcompress.vision.reduction import PruMerge, ToMe, VisionZip, iqr_outliers, strided_indices

TRAINING_FREE = ["visionzip", "prumerge", "tome", "vision_random", "vision_strided", "vision_pool"]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("open_clip:mmc-vit-micro").eval()  # 32 px, patch 8 -> 16 patches


@pytest.fixture(scope="module")
def features(encoder):
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.camera()]
    try:
        cifar = np.load(shared_file("cifar10_dev.npz"))["images"][:3]
        images += list(cifar)
    except pytest.skip.Exception:
        pass
    with torch.no_grad():
        return encoder.encode(images, output_attentions=True)


def test_all_registered_as_vision_family():
    assert set(TRAINING_FREE + ["fastv"]) <= set(list_compressors("vision"))


@pytest.mark.parametrize("name", TRAINING_FREE)
@pytest.mark.parametrize("k", [1, 4, 7, 15, 16])
def test_exact_budget(name, k, features):
    result = create_compressor(name, tokens=k).reduce(features)
    b, n, d = features.patch_tokens.shape
    assert result.tokens.shape == (b, k, d)
    assert result.indices.shape == (b, k) and result.sizes.shape == (b, k)
    assert torch.isfinite(result.tokens).all()
    assert int(result.indices.min()) >= -1 and int(result.indices.max()) < n  # -1: a token at no patch
    anchors = [[i for i in row if i >= 0] for row in result.indices.tolist()]
    assert all(len(set(row)) == len(row) >= k - 1 for row in anchors)  # distinct; at most one token at no patch


@pytest.mark.parametrize("name", TRAINING_FREE)
def test_k_larger_than_patch_count_is_a_clear_error(name, features):
    with pytest.raises(BudgetError, match="only 16 patch tokens"):
        create_compressor(name, tokens=17).reduce(features)


def test_rate_sets_k(features):
    assert create_compressor("vision_random", tokens=None, rate=0.25).reduce(features).k == 4


def test_visionzip_keeps_dominant_and_merges_rest(features):
    zip_ = VisionZip(tokens=8, contextual_ratio=0.25)  # 6 dominant (CLS + 5 patches) + 2 contextual
    r = zip_.reduce(features)
    top = features.cls_attention.topk(5, dim=-1).indices.sort(-1).values
    assert (r.indices[:, 0] == -1).all() and torch.equal(r.indices[:, 1:6], top)
    torch.testing.assert_close(r.tokens[:, 0], features.cls_token)
    torch.testing.assert_close(r.tokens[:, 1:6], features.patch_tokens.gather(1, top[..., None].expand(-1, -1, 32)))
    assert r.sizes.sum(-1).tolist() == [16] * len(r.sizes)  # every patch lands in exactly one output token
    # a contextual token is its target plus the mean of the patches assigned to it
    for row in range(len(r.sizes)):
        for slot in (6, 7):
            target = int(r.indices[row, slot])
            assigned = int(r.sizes[row, slot]) - 1
            assert assigned == 0 or not torch.allclose(r.tokens[row, slot], features.patch_tokens[row, target])


def test_visionzip_needs_attention(features):
    with pytest.raises(ConfigError, match="output_attentions"):
        VisionZip(tokens=4).reduce(features.patch_tokens)


def test_prumerge_selection_and_merge(features):
    r = PruMerge(tokens=4, neighbours=3).reduce(features)
    attn = features.cls_attention
    assert torch.equal(r.indices[:, :3], attn.topk(3, -1).indices)  # descending attention, then the extra token
    assert (r.indices[:, 3] == -1).all() and r.sizes.tolist() == [[4, 4, 4, 13]] * len(r.sizes)
    # each kept token = itself + attention-weighted sum of 3 neighbours: it moved away from the raw patch
    raw = features.patch_tokens.gather(1, r.indices[:, :3, None].expand(-1, -1, 32))
    assert not torch.allclose(raw, r.tokens[:, :3])
    none = PruMerge(tokens=4, neighbours=0).reduce(features)
    torch.testing.assert_close(none.tokens[:, :3], raw)
    pruned = torch.ones_like(attn).scatter(1, r.indices[:, :3], 0.0) * attn
    torch.testing.assert_close(none.tokens[:, 3], (features.patch_tokens * pruned[..., None]).sum(1))


def test_iqr_outliers():
    scores = torch.tensor([[0.1, 0.11, 0.09, 0.1, 0.12, 0.1, 0.9, 0.1]])
    assert iqr_outliers(scores).nonzero()[:, 1].tolist() == [6]


def test_prumerge_adaptive_keeps_outliers_only():
    from mmcompress.vision.encoders.base import EncoderOutput

    attn = torch.full((1, 1, 9, 9), 0.01)
    attn[0, 0, 0, 1 + 3] = 0.9  # one patch the CLS attends to far more than the rest
    feats = EncoderOutput(torch.randn(1, 8, 4), attentions=attn, num_prefix_tokens=1)
    r = PruMerge(tokens=4, adaptive=True, neighbours=2).reduce_to(feats, 4)
    assert r.indices.tolist() == [[3, -1]] and r.extras["outliers"] == [1]  # the outlier, then the extra token


def test_tome_merges_duplicates_first_and_conserves_mass():
    from mmcompress.vision.encoders.base import EncoderOutput

    torch.manual_seed(0)
    base = torch.randn(1, 4, 8)
    x = torch.cat([base, base + 1e-4], dim=1)[:, [0, 4, 1, 5, 2, 6, 3, 7]]  # each token next to its twin
    r = ToMe(tokens=4).reduce(EncoderOutput(x))
    assert r.sizes.tolist() == [[2, 2, 2, 2]]
    torch.testing.assert_close(r.tokens, base + 5e-5, atol=1e-4, rtol=0)
    r1 = ToMe(tokens=1).reduce(EncoderOutput(x))
    torch.testing.assert_close(r1.tokens[0, 0], x[0].mean(0), atol=1e-5, rtol=1e-5)


def test_strided_indices_are_spread():
    assert strided_indices(16, 4).tolist() == [0, 5, 10, 15]
    assert strided_indices(16, 1).tolist() == [8]
    assert len(set(strided_indices(576, 575).tolist())) == 575


def test_random_is_seeded(features):
    a = create_compressor("vision_random", tokens=4, seed=1).reduce(features).indices
    b = create_compressor("vision_random", tokens=4, seed=1).reduce(features).indices
    c = create_compressor("vision_random", tokens=4, seed=2).reduce(features).indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pool_reduction_is_grid_average(features):
    r = create_compressor("vision_pool", tokens=4).reduce(features)
    x = features.patch_tokens.view(-1, 4, 4, 32)
    torch.testing.assert_close(r.tokens[:, 0], x[:, :2, :2].mean(dim=(1, 2)))


def test_compress_from_images_and_prompts(encoder):
    from skimage import data

    zip_ = create_compressor("visionzip-64", tokens=4, encoder=encoder)
    out = zip_.compress([data.astronaut(), data.camera()])
    assert out.tokens.shape == (2, 4, 32)
    assert (out.origin_tokens, out.compressed_tokens, out.saved_tokens) == (32, 8, 24)
    assert out.to_dict()["tokens_per_image"] == 4
    one = zip_.compress("What is <image>?", images=[data.astronaut()])
    assert one.tokens.shape == (1, 4, 32)
    with pytest.raises(InvalidPromptError, match="1 <image> marker"):
        zip_.compress("What is <image>?", images=[data.astronaut(), data.camera()])
    with pytest.raises(BudgetError, match="only 16 patch tokens"):
        zip_.compress(data.astronaut(), tokens=64)


def test_fastv_cannot_run_without_a_vlm():
    with pytest.raises(ConfigError, match="inside the language model"):
        create_compressor("fastv").compress(np.zeros((8, 8, 3), np.uint8))


def test_bad_config_values():
    with pytest.raises(BudgetError, match="positive integer"):
        create_compressor("visionzip", tokens=0)
    with pytest.raises(ConfigError, match="contextual_ratio"):
        create_compressor("visionzip", contextual_ratio=1.5)
    with pytest.raises(ConfigError, match="layer"):
        create_compressor("fastv", layer=0)


@pytest.mark.parametrize("name", ["tome", "visionzip"])
def test_merging_conserves_every_patch(name, features):
    """Merging methods account for every patch once: sizes add up to N and size-weighted tokens to the patch sum."""
    r = create_compressor(name, tokens=5).reduce(features)
    assert r.sizes.sum(-1).tolist() == [16] * r.sizes.shape[0]
    if name == "tome":
        torch.testing.assert_close((r.tokens * r.sizes[..., None]).sum(1), features.patch_tokens.sum(1),
                                   atol=1e-4, rtol=1e-4)


def test_ranking_with_a_random_encoder_warns_with_the_way_out(encoder):
    import warnings

    from mmcompress.errors import RandomWeightsWarning

    image = np.zeros((32, 32, 3), np.uint8)
    assert encoder.randomly_initialised  # open_clip without pretrained weights
    zip_ = create_compressor("visionzip", tokens=4, encoder=encoder)
    with pytest.warns(RandomWeightsWarning, match="randomly initialised encoder.*pretrained="):
        zip_.compress([image])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        zip_.compress([image])  # once per compressor
        create_compressor("vision_random", tokens=4, encoder=encoder).compress([image])  # needs no saliency
        encoder.randomly_initialised = False  # e.g. a trained tower passed in
        try:
            create_compressor("prumerge", tokens=4, encoder=encoder).compress([image])
        finally:
            encoder.randomly_initialised = True
