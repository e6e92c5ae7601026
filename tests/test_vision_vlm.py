"""A tiny random LLaVA run with compressed images: generate() with K tokens per image (one or several images),
token accounting, FastV pruning inside the LLM (equivalence, attention choice, cache, hook removal), bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress import create_compressor
from mmcompress.errors import BudgetError, ImageError, InvalidPromptError
from mmcompress.models.compat import output_cache
from mmcompress.vision.reduction.fastv import find_decoder_layers
from mmcompress.vision.vlm import LlavaRunner
from vision_tiny import make_llava


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava")
    make_llava(folder)  # 32 px, patch 4 -> 64 patches; 4-layer Llama text model
    return folder


@pytest.fixture(scope="module")
def runner(llava_dir):
    return LlavaRunner.from_pretrained(str(llava_dir))


@pytest.fixture(scope="module")
def images():
    from skimage import data

    return [data.astronaut(), data.coffee()]


@pytest.mark.parametrize("method", ["visionzip", "prumerge", "tome", "vision_random", "vision_strided", "vision_pool"])
def test_generate_with_compressed_images(runner, images, method):
    out = runner.generate("Describe <image> and <image>.", images=images,
                          compressor=create_compressor(method, tokens=8), max_new_tokens=4)
    assert len(out.token_ids) == 4
    assert out.visual_tokens_full == 128 and out.visual_tokens == 16 and out.tokens_saved == 112
    full = runner.prepare("Describe <image> and <image>.", images)
    assert out.prompt_tokens == full.input_ids.shape[1] - 112


def test_prepare_places_k_projected_tokens_per_image(runner, images):
    zip_ = create_compressor("visionzip", tokens=6)
    inputs = runner.prepare("A <image> B <image> C", images, zip_)
    assert int(inputs.image_mask.sum()) == 12
    # the embeddings at image positions are the projector applied to the reduced tower features
    with torch.no_grad():
        feats = runner.encoder.encode(images, output_attentions=True)
        expected = runner.model.model.multi_modal_projector(zip_.reduce(feats, 6).tokens).reshape(-1, 32)
    torch.testing.assert_close(inputs.inputs_embeds[inputs.image_mask], expected)


def test_uncompressed_matches_the_models_own_forward(runner, images):
    """With no compressor, our inputs_embeds route gives the same logits as LLaVA's pixel_values route."""
    inputs = runner.prepare("What is <image>?", images[:1])
    pixels = runner.encoder.preprocess(images[:1])
    with torch.no_grad():
        ours = runner.forward(inputs).logits
        ref = runner.model(input_ids=inputs.input_ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_llava_encoder_backend_gives_the_runners_tower_output(llava_dir, runner, images):
    """``create_encoder("llava:PATH")`` loads the checkpoint through models/llava.py, like the runner."""
    from mmcompress.vision.encoders import create_encoder

    tower = create_encoder(f"llava:{llava_dir}")
    with torch.no_grad():
        ours, ref = tower.encode(images[:1]).patch_tokens, runner.encoder.encode(images[:1]).patch_tokens
    assert tower.num_patches == runner.patches_per_image
    torch.testing.assert_close(ours, ref)


def test_no_markers_puts_images_first(runner, images):
    inputs = runner.prepare("What is this?", images[:1], create_compressor("vision_pool", tokens=4))
    assert inputs.image_mask[0, :6].sum() >= 4


def test_bad_inputs(runner, images, tmp_path):
    zip_ = create_compressor("visionzip", tokens=4)
    with pytest.raises(InvalidPromptError, match="2 <image> marker"):
        runner.generate("<image> and <image>", images=images[:1], compressor=zip_)
    with pytest.raises(BudgetError, match="only 64 patch tokens"):
        runner.generate("<image>", images=images[:1], compressor=create_compressor("visionzip", tokens=65))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ImageError, match="cannot read"):
        runner.generate("<image>", images=[str(bad)], compressor=zip_)
    with pytest.raises(InvalidPromptError, match="no images"):
        runner.generate("just text", images=None)


def test_grayscale_and_rgba_images_are_converted(runner):
    gray = np.full((20, 30), 90, np.uint8)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    out = runner.generate("<image> <image>", images=[gray, rgba], compressor=create_compressor("tome", tokens=4),
                          max_new_tokens=2)
    assert out.visual_tokens == 8
    px = runner.encoder.preprocess([rgba, np.full((20, 30, 3), 255, np.uint8)])
    torch.testing.assert_close(px[0], px[1])


# --------------------------------------------------------------------------------------------------- FastV
def test_fastv_keeping_everything_changes_nothing(runner, images):
    inputs = runner.prepare("Look at <image> now", images[:1])
    with torch.no_grad():
        ref = runner.model(inputs_embeds=inputs.inputs_embeds).logits
    out = runner.forward(inputs, create_compressor("fastv", tokens=64, layer=2))
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-4)


def test_fastv_prunes_least_attended_tokens_after_layer_k(runner, images):
    inputs = runner.prepare("Look at <image> now", images[:1])
    fastv = create_compressor("fastv", tokens=8, layer=2)
    with torch.no_grad(), fastv.apply(runner.model, inputs.image_mask) as state:
        out = runner.model(inputs_embeds=inputs.inputs_embeds, use_cache=True)
    length = inputs.input_ids.shape[1]
    kept_len = length - 64 + 8
    assert out.logits.shape[1] == kept_len
    assert [layer.keys.shape[-2] for layer in output_cache(out).layers] == [length, length, kept_len, kept_len]
    # the kept image tokens are the 8 that the last token attends to most in layer 1 (eager attention as reference)
    runner.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = runner.model(inputs_embeds=inputs.inputs_embeds, output_attentions=True).attentions[1]
    finally:
        runner.model.set_attn_implementation("sdpa")
    scores = attn[0, :, -1].mean(0)
    image_pos = inputs.image_mask[0].nonzero().squeeze(1)
    expected = image_pos[scores[image_pos].topk(8).indices].sort().values
    kept = state["keep_index"][0]
    assert kept[inputs.image_mask[0][kept]].tolist() == expected.tolist()
    torch.testing.assert_close(state["scores"][0], scores, atol=1e-5, rtol=1e-4)


def test_fastv_generate_reports_pruned_tokens(runner, images):
    out = runner.generate("<image> and <image>?", images=images, compressor=create_compressor("fastv", rate=0.25),
                          max_new_tokens=5)
    assert len(out.token_ids) == 5
    assert out.visual_tokens == 128 and out.visual_tokens_after_prune == 32 and out.tokens_saved == 96


def test_fastv_hooks_removed_even_when_forward_raises(runner, images):
    inputs = runner.prepare("<image>", images[:1])
    layers = find_decoder_layers(runner.model)
    fastv = create_compressor("fastv", tokens=4, layer=1)
    with pytest.raises(RuntimeError):
        with fastv.apply(runner.model, inputs.image_mask):
            assert any(len(l._forward_pre_hooks) for l in layers)
            runner.model(inputs_embeds=inputs.inputs_embeds[..., :7])  # wrong width: torch raises inside the LLM
    assert all(not l._forward_pre_hooks and not l.self_attn._forward_pre_hooks for l in layers)
    with torch.no_grad():  # and the model runs unpruned afterwards
        assert runner.model(inputs_embeds=inputs.inputs_embeds).logits.shape[1] == inputs.input_ids.shape[1]


def test_fastv_batch_of_two_prompts_equals_each_alone(runner, images):
    """FastV per row: a batch of two prompts keeps, for each, the tokens it keeps alone (the rotary tables are
    shared by the batch; they used to be gathered with the second row's indices and crash)."""
    rows = [runner.prepare("Look at <image> now", [image]) for image in images]
    embeds = torch.cat([r.inputs_embeds for r in rows])
    mask = torch.cat([r.image_mask for r in rows])
    fastv = create_compressor("fastv", tokens=8, layer=2)
    with torch.no_grad(), fastv.apply(runner.model, mask) as state:
        batched = runner.model(inputs_embeds=embeds).logits
    for i, row in enumerate(rows):
        with torch.no_grad(), fastv.apply(runner.model, row.image_mask) as alone_state:
            alone = runner.model(inputs_embeds=row.inputs_embeds).logits
        assert torch.equal(state["keep_index"][i], alone_state["keep_index"][0])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-4)
    with torch.no_grad(), fastv.apply(runner.model, mask):
        out = runner.model.generate(inputs_embeds=embeds, attention_mask=torch.ones(mask.shape, dtype=torch.long),
                                    max_new_tokens=4, do_sample=False, pad_token_id=runner.tokenizer.eos_token_id)
    assert out.shape == (2, 4)
