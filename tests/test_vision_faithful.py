"""The reductions against small restatements of their official code, on the same synthetic features: 576 patches +
CLS with 4 heads (LLaVA-1.5's CLIP-L/336 grid), and 16 patches + CLS. Each restatement copies the official function
line by line (only the hooks and model plumbing around it are left out) and cites repository, commit and file:line.

Inputs are what the official code reads from the tower's layer: hidden states ``[B, 1 + N, D]`` (CLS first),
attention probabilities ``[B, H, 1 + N, 1 + N]`` and keys ``[B, 1 + N, H * Dh]`` (``k_proj`` output).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcompress import create_compressor
from mmcompress.vision.encoders.base import EncoderOutput

HEADS, HEAD_DIM, WIDTH = 4, 16, 32


def synthetic(batch: int, patches: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    length = patches + 1
    hidden = torch.randn(batch, length, WIDTH, generator=g)
    attn = (torch.randn(batch, HEADS, length, length, generator=g) * 2).softmax(-1)
    keys = torch.randn(batch, length, HEADS * HEAD_DIM, generator=g)
    features = EncoderOutput(patch_tokens=hidden[:, 1:], cls_token=hidden[:, 0], attentions=attn, keys=keys,
                             num_prefix_tokens=1)
    return hidden, attn, keys, features


def heads_split(keys):  # [B, L, H*Dh] -> [B, H, L, Dh], as CLIPAttention._shape
    b, length, _ = keys.shape
    return keys.view(b, length, HEADS, HEAD_DIM).transpose(1, 2)


CASES = [(2, 576, 64), (2, 576, 128), (1, 16, 8), (2, 16, 5)]  # (batch, patches, K)


# ------------------------------------------------------------------------------------------------ VisionZip
def official_visionzip(attn_weights, hidden_states, metric, dominant_num, contextual_num):
    """dvlab-research/VisionZip @ 3151f6df4fca36a4cd1c985e5956e725b1f9ad02, visionzip/clip_encoder.py:50-85
    (CLIPVisionTower_VisionZip.forward, batched branch); ``metric`` is utils.py:89 ``raw_key_states.mean(1)`` and
    ``dominant_num`` is main.py:7 ``dominant - 1``."""
    cls_idx = 0
    cls_attention = attn_weights[:, :, cls_idx, cls_idx + 1:]
    cls_attention_sum = cls_attention.sum(dim=1)
    topk_indices = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros((hidden_states.shape[0], 1), dtype=topk_indices.dtype), topk_indices], dim=1)
    mask = torch.ones_like(hidden_states[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(
        hidden_states.shape[0], dominant_num + 1, hidden_states.shape[2])
    metric_filtered = metric[mask].view(hidden_states.shape[0], hidden_states.shape[1] - (dominant_num + 1),
                                        metric.shape[2])
    hidden_states_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(
        hidden_states.shape[0], hidden_states.shape[1] - (dominant_num + 1), hidden_states.shape[2])
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[1] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[1], step)[:contextual_num]
    target_tokens = metric_normalized[:, target_indices, :]
    tokens_to_merge = metric_normalized[:, ~torch.isin(torch.arange(metric_normalized.shape[1]), target_indices), :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    assign_one_hot = torch.zeros(tokens_to_merge.shape[0], tokens_to_merge.shape[1], contextual_num,
                                 dtype=hidden_states_filtered.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    hidden_to_merge = hidden_states_filtered[:, ~torch.isin(torch.arange(hidden_states_filtered.shape[1]),
                                                            target_indices), :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    target_hidden = hidden_states_filtered[:, target_indices, :]
    contextual_tokens = target_hidden + aggregated_hidden
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), all_indices


@pytest.mark.parametrize("batch,patches,k", CASES)
def test_visionzip_matches_official(batch, patches, k):
    hidden, attn, keys, features = synthetic(batch, patches)
    result = create_compressor("visionzip", tokens=k).reduce(features)
    dominant, contextual = result.extras["dominant"], result.extras["contextual"]
    assert (dominant, contextual) == {64: (54, 10), 128: (108, 20)}.get(k, (dominant, contextual))
    expected, all_indices = official_visionzip(attn, hidden, heads_split(keys).mean(1), dominant - 1, contextual)
    assert result.tokens.shape == expected.shape == (batch, k, WIDTH)
    torch.testing.assert_close(result.tokens, expected, atol=1e-4, rtol=0)
    # kept set: the CLS token (index -1 here, 0 there) and the same dominant patches (offset by the CLS)
    assert torch.equal(result.indices[:, :dominant] + 1, all_indices.sort(-1).values)
    assert result.sizes[:, 0].tolist() == [0] * batch and int(result.sizes[0].sum()) == patches


def test_visionzip_options_restore_the_earlier_behaviour():
    _, _, _, features = synthetic(1, 16)
    patches_only = create_compressor("visionzip", tokens=8, include_cls=False, contextual="mean").reduce(features)
    assert (patches_only.indices >= 0).all() and int(patches_only.sizes.sum()) == 16
    # contextual="mean" is a size-weighted average: the output accounts for every patch's mass exactly once
    torch.testing.assert_close((patches_only.tokens * patches_only.sizes[..., None]).sum(1),
                               features.patch_tokens.sum(1), atol=1e-4, rtol=1e-4)
    official = create_compressor("visionzip", tokens=8).reduce(features)
    assert not torch.allclose(official.tokens[:, -2:], patches_only.tokens[:, -2:])


# ------------------------------------------------------------------------------------------------ PruMerge
def outlier_dectection(attn):
    """42Shawn/LLaVA-PruMerge @ 097c04116a58465e4bcb58cec44a94018a68ff1a,
    llava/model/multimodal_encoder/clip_encoder.py:34-47."""
    attn_np = attn.to(dtype=torch.float32).cpu().numpy().flatten()
    Q1 = np.percentile(attn_np, 25)
    Q3 = np.percentile(attn_np, 75)
    IQR = Q3 - Q1
    upper_bound = Q3 + 1.5 * IQR
    outlier_indices = np.where((attn_np > upper_bound))[0]
    return len(outlier_indices) / len(attn_np)


def complement_idx(idx, dim):
    """ibid. clip_encoder.py:12-25."""
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1, )
    for i in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


def official_prumerge(cls_attn, image_features, desired_layer_k, if_adaptive, reduction_ratio, neighbours=32):
    """ibid. clip_encoder.py:112-171 (token_prune_merge_advanced after the attention is computed). ``cls_attn`` is
    given (the official computes it at clip_encoder.py:109-112 from the layer's q/k); keys are gathered with their
    own width (the official reuses ``index``, expanded to C, as its keys and features are both 1024 wide); ``neighbours`` is the
    official ``int(32)`` at line 156, capped at N - 1 for the 16-patch case where the official topk would raise."""
    B, N, C = image_features.shape
    if if_adaptive:
        reduction_ratio = outlier_dectection(cls_attn)
    _, idx = torch.topk(cls_attn, int(N * reduction_ratio), dim=1, largest=True)
    index = idx.unsqueeze(-1).expand(-1, -1, C)
    Key_wo_cls = desired_layer_k[:, 1:]
    x_others = torch.gather(image_features, dim=1, index=index)
    x_others_attn = torch.gather(cls_attn, dim=1, index=idx)
    Key_others = torch.gather(Key_wo_cls, dim=1, index=idx.unsqueeze(-1).expand(-1, -1, Key_wo_cls.shape[-1]))
    compl = complement_idx(idx, N)
    non_topk = torch.gather(image_features, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))
    non_topk_Key = torch.gather(Key_wo_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, Key_wo_cls.shape[-1]))
    non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)
    Key_others_norm = F.normalize(Key_others, p=2, dim=-1)
    non_topk_Key_norm = F.normalize(non_topk_Key, p=2, dim=-1)
    B, left_tokens, C = x_others.size()
    updated_x_others = torch.zeros_like(x_others)
    for b in range(B):
        for i in range(left_tokens):
            key_others_norm = Key_others_norm[b, i, :].unsqueeze(0).unsqueeze(0)
            before_i_Key = Key_others_norm[b, :i, :].unsqueeze(0)
            after_i_Key = Key_others_norm[b, i + 1:, :].unsqueeze(0)
            before_i_x_others = x_others[b, :i, :].unsqueeze(0)
            after_i_x_others = x_others[b, i + 1:, :].unsqueeze(0)
            rest_x_others = torch.cat([before_i_x_others, after_i_x_others, non_topk[b, :, :].unsqueeze(0)], dim=1)
            before_i_x_others_attn = x_others_attn[b, :i].unsqueeze(0)
            after_i_x_others_attn = x_others_attn[b, i + 1:].unsqueeze(0)
            rest_x_others_attn = torch.cat([before_i_x_others_attn, after_i_x_others_attn,
                                            non_topk_attn[b, :].unsqueeze(0)], dim=1)
            rest_Keys = torch.cat([before_i_Key, after_i_Key, non_topk_Key_norm[b, :, :].unsqueeze(0)], dim=1)
            cos_sim_matrix = torch.bmm(key_others_norm, rest_Keys.transpose(1, 2))
            _, cluster_indices = torch.topk(cos_sim_matrix, k=int(neighbours), dim=2, largest=True)
            cluster_tokens = rest_x_others[:, cluster_indices.squeeze(), :]
            weights = rest_x_others_attn[:, cluster_indices.squeeze()].unsqueeze(-1)
            weighted_avg = torch.sum(cluster_tokens * weights, dim=1)
            updated_center = weighted_avg + x_others[b, i, :]
            updated_x_others[b, i, :] = updated_center
    extra_one_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
    return torch.cat([updated_x_others, extra_one_token], dim=1), idx


@pytest.mark.parametrize("batch,patches,k", CASES)
def test_prumerge_matches_official(batch, patches, k):
    hidden, attn, keys, features = synthetic(batch, patches, seed=1)
    cls_attn = attn[:, :, 0, 1:].mean(1)
    result = create_compressor("prumerge", tokens=k).reduce(features)
    # the official keeps int(N * ratio) tokens and appends one: ratio (K - 1) / N gives K in all
    expected, idx = official_prumerge(cls_attn, hidden[:, 1:], keys, False, (k - 1) / patches, min(32, patches - 1))
    assert result.tokens.shape == expected.shape == (batch, k, WIDTH)
    assert torch.equal(result.indices[:, :-1], idx)  # same patches, same descending-attention order
    torch.testing.assert_close(result.tokens, expected, atol=1e-4, rtol=0)
    assert result.sizes[:, -1].tolist() == [patches - (k - 1)] * batch


@pytest.mark.parametrize("patches,seed", [(576, 2), (576, 3), (16, 4)])
def test_prumerge_adaptive_matches_official(patches, seed):
    hidden, attn, keys, features = synthetic(1, patches, seed=seed)
    cls_attn = attn[:, :, 0, 1:].mean(1)
    result = create_compressor("prumerge", tokens=64, adaptive=True).reduce(features)
    expected, idx = official_prumerge(cls_attn, hidden[:, 1:], keys, True, None, min(32, patches - 1))
    assert result.tokens.shape == expected.shape  # the outlier count + 1, whatever `tokens` says
    assert torch.equal(result.indices[:, :-1], idx)
    torch.testing.assert_close(result.tokens, expected, atol=1e-4, rtol=0)
    assert result.tokens.shape[1] == idx.shape[1] + 1 and idx.shape[1] != 63  # not the `tokens` budget


def test_prumerge_adaptive_batch_with_different_counts_is_a_clear_error():
    from mmcompress.errors import ConfigError

    _, _, _, features = synthetic(2, 576, seed=5)
    reducer = create_compressor("prumerge", adaptive=True)
    outliers = reducer.reduce(features.select(torch.tensor([0]))).tokens.shape[1], \
        reducer.reduce(features.select(torch.tensor([1]))).tokens.shape[1]
    if outliers[0] != outliers[1]:
        with pytest.raises(ConfigError, match="one image at a time"):
            reducer.reduce(features)
    else:  # same count: the batch works
        assert reducer.reduce(features).tokens.shape[1] == outliers[0]


def test_prumerge_options_restore_the_earlier_behaviour():
    _, _, _, features = synthetic(2, 16)
    r = create_compressor("prumerge", tokens=4, extra_token=False, patch_order=True, neighbours=3).reduce(features)
    assert torch.equal(r.indices, features.cls_attention.topk(4, -1).indices.sort(-1).values)
    assert (r.sizes == 4).all()


# ------------------------------------------------------------------------------------------------------ ToMe
def bipartite_soft_matching(metric, r, class_token=False, distill_token=False):
    """facebookresearch/ToMe @ af95e4b1befa172dadccd8c81e223b10090f9579, tome/merge.py:18-80 (merge only)."""
    protected = 0
    if class_token:
        protected += 1
    if distill_token:
        protected += 1
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return lambda x, mode=None: x
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_wavg(merge, x, size=None):
    """ibid. tome/merge.py:210-224."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    x = x / size
    return x, size


def official_tome(x, metric, k):
    """Rounds of the official step until k tokens remain; the metric (tome/patch/timm.py:96 ``k.mean(1)``) is merged
    with the same weighted average, as a next layer's keys would be recomputed from merged tokens."""
    size = None
    while x.shape[1] > k:
        merge = bipartite_soft_matching(metric, x.shape[1] - k)
        metric, _ = merge_wavg(merge, metric, size)
        x, size = merge_wavg(merge, x, size)
    return x, size[..., 0]


@pytest.mark.parametrize("batch,patches,k", CASES + [(1, 49, 12), (1, 577, 64)])
def test_tome_matches_official(batch, patches, k):
    hidden, _, keys, _ = synthetic(batch, patches, seed=6)
    # all tokens are merged (no CLS protection): the 577 / 49 cases are odd counts where the cap t // 2 matters
    features = EncoderOutput(patch_tokens=hidden, keys=keys, num_heads=HEADS)
    result = create_compressor("tome", tokens=k).reduce(features)
    expected, size = official_tome(hidden, heads_split(keys).mean(1), k)
    assert result.tokens.shape == expected.shape == (batch, k, WIDTH)
    # same merged tokens: ToMe's order (unmerged A, then B) vs patch order here -> match them up
    nearest = torch.cdist(result.tokens, expected).argmin(-1)
    for row in range(batch):
        assert sorted(nearest[row].tolist()) == list(range(k))
        torch.testing.assert_close(result.tokens[row], expected[row, nearest[row]], atol=1e-4, rtol=0)
        assert result.sizes[row].tolist() == size[row, nearest[row]].long().tolist()
