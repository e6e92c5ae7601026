"""The interleaved compressor's mean-pooling style on tiny models: K near-equal groups per chunk, the soft tokens as
the base model's averaged keys/values at grouped positions, gradients, save/load, and starting the soft encoder from
a saved text compressor (the shipped recipe starts from soft-smollm2-4x)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.models.compat import cache_kwargs, new_cache, output_cache
from mmcompress.multimodal.interleaved import InterleavedCompressor
from mmcompress.soft.meanpool import MeanPoolCompressor, group_index

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Photo A: <image> Photo B: <image> Which one is red?"


def _images():
    return [np.full((32, 32, 3), c, dtype=np.uint8) for c in ((230, 20, 20), (20, 20, 230))]


def _make(tiny_dir, **kw) -> InterleavedCompressor:
    torch.manual_seed(0)
    fields = dict(style="meanpool", num_slots=6, chunk_tokens=64, vision_encoder="open_clip:mmc-vit-micro",
                  adapter="pool", image_tokens=4, lora_r=4, lora_alpha=8, max_new_tokens=3, device="cpu",
                  dtype="float32")
    fields.update(kw)
    return InterleavedCompressor(model=str(tiny_dir), **fields)


def _perturb_lora(module) -> None:
    with torch.no_grad():  # move the adapters off zero so a lost or misplaced tensor shows in the outputs
        for n, p in module.named_parameters():
            if "lora_B" in n or n == "markers":
                p.normal_(0, 0.3)


def test_group_index_splits_each_chunk_into_k_contiguous_near_equal_groups():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 11, [0] * 8 + [1] * 3])
    group, counts = group_index(mask, groups=4)
    assert counts.tolist() == [4, 4, 3]  # a chunk shorter than K gets one group per token
    for row, m in zip(group, mask):
        real = row[m.bool()].tolist()
        assert real == sorted(real) and set(real) == set(range(len(set(real))))  # contiguous, in order, none empty
        sizes = np.bincount(real)
        assert sizes.max() - sizes.min() <= 1
        assert (row[~m.bool()] == -1).all()
    with pytest.raises(ValueError, match="exactly one"):
        group_index(mask, 2, groups=2)


def test_soft_tokens_are_the_base_models_keys_averaged_over_k_groups(tiny_dir):
    """With the adapter at identity, soft token ``g`` of every layer is the mean of the base model's keys/values of
    the ``g``-th stretch of the embedded prompt (adapter tokens included), all of its tokens placed at position g."""
    comp = _make(tiny_dir)
    comp.module.eval()
    for k in (3, 6):
        soft = comp.set_slots(k).compress(TEXT, images=_images())
        segment = soft.items[0][0]
        assert soft.soft_tokens == [k] and segment.kv[0][0].shape[-2] == k
        prompt, layout = comp.layout(TEXT, images=_images())
        item = comp.query_ids(layout)  # question-agnostic: nothing extra
        batch = comp.collate([comp.example_item(prompt, "x")])
        with torch.no_grad():
            embeds = comp.module.embed_chunks(batch)
            mask = batch["chunk_mask"]
            keep = mask[0].bool()
            length = int(keep.sum())
            positions = torch.tensor([[i * k // length for i in range(length)]])
            cache = new_cache(comp.llm)
            with comp.module.encoder.peft.disable_adapter():
                out = comp.module.encoder.backbone(inputs_embeds=embeds[:, keep], position_ids=positions,
                                                   use_cache=True, **cache_kwargs(comp.module.encoder.backbone, cache))
            cache = output_cache(out) or cache
        assert item == []
        for layer, (key, value) in enumerate(segment.kv):
            ref_k, ref_v = cache.layers[layer].keys[0], cache.layers[layer].values[0]
            for g in range(k):
                cols = [i for i in range(length) if i * k // length == g]
                assert torch.allclose(key[:, g], ref_k[:, cols].mean(1), atol=1e-5)
                assert torch.allclose(value[:, g], ref_v[:, cols].mean(1), atol=1e-5)
    comp.set_slots(None)


def test_gradients_reach_only_lora_markers_and_the_adapter(tiny_dir):
    comp = _make(tiny_dir, decoder_lora_r=2)
    batch = comp.collate([comp.example_item(comp.layout(TEXT, images=_images())[0], "the first")] * 2)
    module = comp.module
    module.train()
    module.training_step(batch)["loss"].backward()
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "encoder.slots" not in dict(module.named_parameters())  # no memory slots in this style
    assert all("lora_" in n or ".adapter." in n or n == "markers" for n in trained)
    assert any(".decoder." in n for n in trained) and any(".default." in n for n in trained)
    grads = {n: p.grad for n, p in module.named_parameters()}
    assert all(grads[n] is None for n in grads if n not in trained)
    assert grads["markers"] is not None and any(grads[n] is not None and grads[n].abs().sum() > 0
                                                for n in trained if ".adapter." in n)
    # both adapters learn (B: A gets none while B starts at zero): the encoder through the pooled cache, the decoder through the answer
    for name in (".default.", ".decoder."):
        assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in trained if name in n and "lora_B" in n)


def test_save_load_round_trip_keeps_style_k_and_outputs(tiny_dir, tmp_path):
    from mmcompress import create_compressor

    comp = _make(tiny_dir, slot_schedule=[2, 6])
    _perturb_lora(comp.module)
    comp.module.eval()
    soft = comp.set_slots(2).compress(TEXT, images=_images())
    answer = comp.generate(soft)
    loaded = create_compressor(str(comp.save_pretrained(tmp_path / "saved")))
    assert loaded.config.style == "meanpool" and loaded.config.slot_schedule == [2, 6]
    again = loaded.set_slots(2).compress(TEXT, images=_images())
    assert all(torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
               for a, b in zip(soft.items[0][0].kv, again.items[0][0].kv))
    assert loaded.generate(again) == answer


def _text_compressor(tiny_dir, tmp_path, **kw):
    fields = dict(pool_ratio=4, chunk_tokens=16, lora_r=4, lora_alpha=8, decoder_lora_r=2, device="cpu",
                  dtype="float32")
    fields.update(kw)
    text = MeanPoolCompressor(model=str(tiny_dir), **fields)
    torch.manual_seed(1)
    _perturb_lora(text.module)
    return text, text.save_pretrained(tmp_path / "text")


def test_soft_encoder_starts_from_a_saved_text_compressor(tiny_dir, tmp_path):
    text, folder = _text_compressor(tiny_dir, tmp_path)
    comp = _make(tiny_dir, decoder_lora_r=2)
    path_before = {k: v.clone() for k, v in comp.module.image_path.state_dict().items()}
    comp.load_text_compressor(str(folder))
    own = dict(comp.module.named_parameters())
    for name, value in text.trainable_state_dict().items():
        assert torch.equal(own[name].detach(), value), name
    assert all(torch.equal(v, path_before[k]) for k, v in comp.module.image_path.state_dict().items())
    # the loaded encoder is the text compressor's own: a text-only prompt pooled at the text compressor's groups
    # gives the same cache
    ids = text.tokenizer("Paris is the capital and most populous city of France.", add_special_tokens=False)["input_ids"]
    sentence = text.tokenizer.decode(ids[:12])
    ref = text.encode_spans([sentence])[0]
    got = comp.set_slots(3).compress(sentence, question="Where?")
    assert got.soft_tokens == [3] and ref.num_tokens == 3
    assert all(torch.allclose(a[0], b[0], atol=1e-5) for a, b in zip(ref.kv, got.items[0][0].kv))


def test_a_text_compressor_that_does_not_fit_is_refused(tiny_dir, tmp_path):
    _, folder = _text_compressor(tiny_dir, tmp_path)
    with pytest.raises(ConfigError, match="lora_r: 4 there, 8 here"):
        _make(tiny_dir, decoder_lora_r=2, lora_r=8).load_text_compressor(str(folder))
    with pytest.raises(ConfigError, match="decoder_lora_r"):
        _make(tiny_dir).load_text_compressor(str(folder))
    with pytest.raises(ConfigError, match="'meanpool' compressor; style='kv'"):
        _make(tiny_dir, style="kv", decoder_lora_r=2).load_text_compressor(str(folder))
    with pytest.raises(ConfigError, match="neither a shipped"):
        _make(tiny_dir).load_text_compressor(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="question_aware"):
        _make(tiny_dir, question_aware=True)


@pytest.mark.shared
def test_shipped_meanpool_recipe_starts_from_the_shipped_text_compressor(tiny_dir, tmp_path):
    """The shipped recipe names soft-smollm2-4x with the settings that fit it, and (shrunk to a tiny model and a tiny
    text compressor) trains from it through the CLI."""
    pytest.importorskip("easy_vqa")
    import yaml

    from mmcompress.cli import main
    from mmcompress.factory import list_trained, read_saved_meta
    from mmcompress.multimodal.training import build_interleaved
    from mmcompress.training.tasks import load_recipe

    shipped = load_recipe("configs/train/interleaved-shapes-meanpool.yaml")
    name = shipped["init_text_compressor"]
    saved = read_saved_meta(list_trained()[name], "mmcompress_config.json")["config"]
    for field in ("model", "lora_r", "lora_alpha", "decoder_lora_r"):
        assert shipped["model"][field] == saved[field], field
    assert shipped["model"]["style"] == "meanpool" and not shipped.get("init_from")

    text, folder = _text_compressor(tiny_dir, tmp_path)
    tiny = {"model.model": str(tiny_dir), "model.vision_encoder": "open_clip:mmc-vit-micro", "model.image_tokens": 4,
            "model.device": "cpu", "model.num_slots": 4, "model.slot_schedule": [2, 4], "model.lora_r": 4,
            "model.lora_alpha": 8, "model.decoder_lora_r": 2, "model.decoder_lora": None, "init_image_path": None,
            "init_text_compressor": str(folder), "data.train_examples": 4, "data.eval_examples": 2,
            "data.max_images": 40, "train.max_steps": 1, "train.batch_size": 2, "train.eval_every": 0,
            "train.save_every": 0, "train.progress": False, "train.mixed_precision": "no",
            "train.output_dir": str(tmp_path / "run")}
    recipe = load_recipe("configs/train/interleaved-shapes-meanpool.yaml", tiny)
    setup = build_interleaved(recipe)
    own = dict(setup.module.named_parameters())
    assert all(torch.equal(own[n].detach(), v) for n, v in text.trainable_state_dict().items())
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(config)]) == 0
    assert (tmp_path / "run" / "final" / "trainable.safetensors").is_file()
    with pytest.raises(ConfigError, match="give one"):
        build_interleaved(load_recipe("configs/train/interleaved-shapes-meanpool.yaml",
                                      {**tiny, "init_from": str(tmp_path / "run" / "final")}))
