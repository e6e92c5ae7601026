"""SmallVLM: open_clip ViT + adapter + frozen LLM (tiny Llama here); both objectives train, the frozen LLM stays
frozen and out of checkpoints, reductions plug in before the adapter, save/load round trip, the training task."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.vision.adapters import create_adapter
from mmcompress.vision.encoders import create_encoder
from mmcompress.vision.small_vlm import SmallVLM, SmallVLMConfig
from tiny_models import make_learnable_llama


def single_token_words(tokenizer, n=3):
    words = []
    for piece in sorted(tokenizer.get_vocab()):
        w = piece[1:]
        if piece.startswith("\u0120") and w.isalpha() and len(w) >= 3 \
                and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            words.append(w)
    assert len(words) >= n
    return words[:n]


@pytest.fixture
def vlm(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(0)
    enc = create_encoder("open_clip:mmc-vit-micro")
    adapter = create_adapter("perceiver", in_dim=32, out_dim=model.config.hidden_size, tokens=4, heads=2, dim_head=8)
    return SmallVLM(enc, adapter, model, tok, single_token_words(tok), SmallVLMConfig(objective="qa"))


def test_shapes_and_prediction(vlm):
    pixels = torch.randn(3, 3, 32, 32)
    tokens = vlm.image_tokens(pixels)
    assert tokens.shape == (3, 4, 32)
    with torch.no_grad():
        features = vlm.encoder(pixels).patch_tokens
        # the nested resampler's first 2 latents: the adapter's own output for tokens=2, per image
        torch.testing.assert_close(vlm.image_tokens(pixels, tokens=2), vlm.adapter(features, tokens=2))
        torch.testing.assert_close(tokens, vlm.adapter(features))
        assert not torch.allclose(tokens[0], tokens[1])  # the image tokens depend on the image
        logits = vlm.answer_logits(pixels)
    pred = vlm.predict(pixels)
    # closed-set prediction = the best-scoring answer word's index; greedy = the best token overall
    assert torch.equal(pred["closed"], logits[:, vlm.answer_ids].argmax(-1))
    assert torch.equal(pred["greedy"], logits.argmax(-1))
    greedy_word = vlm.tokenizer.decode([int(pred["greedy"][0])]).strip()
    assert vlm.generate(pixels[:1], max_new_tokens=1) == [greedy_word]  # the first generated token is the greedy one


def test_prefix_cache_gives_the_same_logits_as_the_full_prompt(vlm):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cached = vlm.answer_logits(pixels)
        embed = vlm.llm.get_input_embeddings()
        x = torch.cat([embed(vlm._prefix_ids).expand(2, -1, -1), vlm.image_tokens(pixels),
                       embed(vlm._suffix_ids).expand(2, -1, -1)], 1)
        full = vlm.llm(inputs_embeds=x).logits[:, -1]
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("objective", ["qa", "embedding"])
def test_training_step_updates_vision_side_only(tiny_lm, objective):
    _, tok = tiny_lm
    torch.manual_seed(0)
    enc = create_encoder("open_clip:mmc-vit-micro")
    llm = make_learnable_llama(tok, hidden_size=32)
    adapter = create_adapter("perceiver", in_dim=32, out_dim=llm.config.hidden_size, tokens=4, heads=2, dim_head=8)
    vlm = SmallVLM(enc, adapter, llm, tok, single_token_words(tok), SmallVLMConfig(objective=objective))
    llm_before = [p.clone() for p in vlm.llm.parameters()]
    params = [p for p in vlm.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in vlm.llm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    batch = {"pixels": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}
    losses = []
    for _ in range(15):
        out = vlm.training_step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    # an LLM with real logit scale: both objectives must cut the loss by a third, not by a rounding error
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is not None for p in vlm.adapter.parameters())
    assert all(torch.equal(a, b) for a, b in zip(llm_before, vlm.llm.parameters()))
    assert not any(k.startswith("lm") for k in vlm.state_dict())  # the frozen LLM is not part of checkpoints


def test_reduction_before_adapter(vlm):
    from mmcompress import create_compressor

    pixels = torch.randn(2, 3, 32, 32)
    mlp = create_adapter("mlp", in_dim=32, out_dim=32)
    vlm.adapter = mlp
    assert vlm.image_tokens(pixels).shape == (2, 16, 32)
    reduction = create_compressor("vision_strided", tokens=4)
    reduced = vlm.image_tokens(pixels, tokens=4, reduction=reduction)
    assert reduced.shape == (2, 4, 32)
    with torch.no_grad():  # the adapter sees the reduction's tokens (reduce first, then adapt), not all 16 patches
        features = vlm.encoder(pixels)
        torch.testing.assert_close(reduced, mlp(reduction.reduce(features, 4).tokens))
        full = vlm.image_tokens(pixels)
        kept = reduction.reduce(features, 4)
        if getattr(kept, "indices", None) is not None:  # a per-token MLP: the kept rows of the full output
            torch.testing.assert_close(reduced, torch.gather(full, 1, kept.indices[..., None].expand(-1, -1, 32)))
    assert vlm.image_tokens(pixels, tokens=4, reduction=create_compressor("visionzip", tokens=4)).shape == (2, 4, 32)


def test_save_and_load(vlm, tmp_path, tiny_lm):
    vlm.save_pretrained(tmp_path / "svlm")
    loaded = SmallVLM.from_pretrained(tmp_path / "svlm", *tiny_lm)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.answer_logits(pixels), vlm.answer_logits(pixels))


def test_multi_token_answers_are_rejected(tiny_lm):
    model, tok = tiny_lm
    enc = create_encoder("open_clip:mmc-vit-micro")
    adapter = create_adapter("pool", in_dim=32, out_dim=32, tokens=4)
    with pytest.raises(ConfigError, match="single token"):
        SmallVLM(enc, adapter, model, tok, ["photosynthesis"])


def test_small_vlm_task_builds_from_a_recipe(tmp_path, tiny_dir, tiny_lm):
    from mmcompress.training import TASKS

    rng = np.random.default_rng(0)
    tok_words = single_token_words(tiny_lm[1], 2)
    images = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array(tok_words * 10))
    setup = TASKS.get("small_vlm")({
        "task": "small_vlm",
        "model": {"encoder": "open_clip:mmc-vit-micro", "lm": str(tiny_dir), "objective": "embedding",
                  "adapter": {"name": "perceiver", "tokens": 4, "heads": 2, "dim_head": 8}, "nested_tokens": [1, 4]},
        "data": {"npz": str(tmp_path / "d.npz"), "train_fraction": 0.8},
    })
    # 20 images: 4 test (never read by training), 16 left: 2 validation (what the run is scored on), 14 train
    assert len(setup.train_dataset) == 14 and len(setup.eval_dataset) == 2
    from mmcompress.vision.training import load_npz_split, load_npz_splits

    train, validation, test = load_npz_splits(tmp_path / "d.npz", 0.8, 0.1)
    assert test.images.tobytes() == load_npz_split(tmp_path / "d.npz", 0.8)[1].images.tobytes()  # the test split as before
    seen = {x.tobytes() for x in train.images}
    assert not seen & {x.tobytes() for x in validation.images} and not seen & {x.tobytes() for x in test.images}
    assert not {x.tobytes() for x in validation.images} & {x.tobytes() for x in test.images}
    batch = torch.utils.data.default_collate([setup.train_dataset[i] for i in range(4)])
    assert torch.isfinite(setup.module.training_step(batch)["loss"])
    assert set(setup.module.evaluation_step(batch)) == {"closed_acc", "greedy_acc"}


def test_embedding_mse_term_pulls_tokens_to_the_class_embedding_scale(vlm):
    """``mse_weight`` adds nothing for tokens equal to the class embedding, and penalises a wrong scale that the
    cosine terms cannot see."""
    vlm.config.objective = "embedding"
    label = torch.tensor([0, 2])
    exact = vlm.llm.get_input_embeddings().weight[vlm.answer_ids[label]].detach().unsqueeze(1).repeat(1, 2, 1)

    def loss(img, weight):
        vlm.config.mse_weight = weight
        return float(vlm.loss_on(img, label)["loss"])

    assert loss(exact, 1.0) == pytest.approx(loss(exact, 0.0), abs=1e-5)
    assert loss(3 * exact, 0.0) == pytest.approx(loss(exact, 0.0), abs=1e-4)  # cosine terms are scale-blind
    assert loss(3 * exact, 1.0) > loss(exact, 1.0) + 1.0


def _mlp_vlm(tiny_lm, **config):
    model, tok = tiny_lm
    torch.manual_seed(0)
    enc = create_encoder("open_clip:mmc-vit-micro")  # 16 patches
    adapter = create_adapter("mlp", in_dim=32, out_dim=model.config.hidden_size, depth=1)  # per patch, linear
    return SmallVLM(enc, adapter, model, tok, single_token_words(tok), SmallVLMConfig(objective="qa", **config))


def test_token_dropout_is_off_by_default(tiny_lm):
    vlm = _mlp_vlm(tiny_lm)
    assert vlm.config.token_dropout is None
    vlm.train()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trained_view = vlm.image_tokens(pixels)
        vlm.eval()
        torch.testing.assert_close(trained_view, vlm.image_tokens(pixels))  # all 16 patches, also in training
    assert trained_view.shape == (2, 16, 32)


def test_token_dropout_trains_on_random_subsets_in_patch_order(tiny_lm):
    vlm = _mlp_vlm(tiny_lm, token_dropout=[2, 5])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        vlm.eval()
        whole = vlm.image_tokens(pixels)  # eval: every patch, one token each
        assert whole.shape == (3, 16, 32)
        vlm.train()
        sizes, subsets = set(), set()
        for _ in range(30):
            kept = vlm.image_tokens(pixels)
            sizes.add(kept.shape[1])
            assert kept.shape[0] == 3 and 2 <= kept.shape[1] <= 5
            for b in range(3):  # each kept token is one patch's token, the patches in increasing order
                where = (kept[b, :, None] - whole[b, None]).abs().amax(-1).argmin(-1)
                torch.testing.assert_close(kept[b], whole[b, where])
                assert bool((where[1:] > where[:-1]).all()), where
                subsets.add(tuple(where.tolist()))
    assert sizes == {2, 3, 4, 5}  # K drawn over the whole range
    assert len(subsets) > 20  # a fresh random subset per image and step


def test_token_dropout_changes_what_the_llm_reads_in_training(tiny_lm):
    vlm = _mlp_vlm(tiny_lm, token_dropout=[3, 3])
    lengths = []
    hook = vlm.llm.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["inputs_embeds"].shape[1])
                                             if kw.get("inputs_embeds") is not None else None, with_kwargs=True)
    batch = {"pixels": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1])}
    suffix = vlm._suffix_ids.shape[1]
    try:
        vlm.train()
        out = vlm.training_step(batch)
        out["loss"].backward()
        vlm.eval()
        vlm.predict(batch["pixels"])
    finally:
        hook.remove()
    assert lengths == [3 + suffix, 16 + suffix]  # 3 of 16 patches while training, all 16 in evaluation
    assert all(p.grad is not None for p in vlm.adapter.parameters())


@pytest.mark.parametrize("bad", [[5, 4], [0, 3], [3]])
def test_token_dropout_range_is_checked(tiny_lm, bad):
    with pytest.raises(ConfigError, match="token_dropout"):
        SmallVLMConfig(token_dropout=bad)
    vlm = _mlp_vlm(tiny_lm, token_dropout=[17, 20])  # more than the 16 patches: a clear error, not a gather crash
    vlm.train()
    with pytest.raises(ConfigError, match="at least 17"):
        vlm.image_tokens(torch.randn(1, 3, 32, 32))


def test_fair_testbed_statistics():
    import sys
    from pathlib import Path

    from mmcompress.evaluation.metrics import wilson_interval

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from vision_small_vlm_fair import paired

    # Wilson (1927) score intervals, as statsmodels' proportion_confint(method="wilson") gives them
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)  # not empty at 0 successes
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([0, 0, 1, 1, 0, 0, 1, 0], bool)
    out = paired(a, b, rounds=2000)
    assert (out["won"], out["lost"]) == (4, 1) and out["mcnemar_p"] == pytest.approx(2 * 6 / 32)
    assert out["diff"] == pytest.approx(3 / 8) and out["diff_lo"] <= out["diff"] <= out["diff_hi"]
    assert out["diff_lo"] < 0.2 and out["diff_hi"] > 0.5  # eight images: a wide interval
