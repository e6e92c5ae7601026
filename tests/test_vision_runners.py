"""One runner for the HF VLM families (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3,
SmolVLM) on tiny random
models built offline: keeping every visual token gives exactly the model's own generate(); K tokens give K visual
places (with their own M-RoPE positions for Qwen); a batch with different image counts per prompt gives, row by row,
what each prompt gives alone; FastV prunes inside every family's LLM."""
from __future__ import annotations

import pytest
import torch

from mmcompress import create_compressor
from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.vision.runners import (AnyResolutionRunner, Idefics3Runner, Llava15Runner, Qwen2VLRunner,
                                       create_vlm)
from vision_tiny import make_llava
from vision_tiny_families import make_idefics3, make_llava_next, make_llava_onevision, make_qwen2_vl

FAMILIES = {
    "llava": lambda: make_llava(),
    "llava_next": make_llava_next,
    "llava_onevision": make_llava_onevision,
    "qwen2_vl": make_qwen2_vl,
    "qwen2_5_vl": lambda: make_qwen2_vl(version="2.5"),
    "idefics3": make_idefics3,
    "smolvlm": lambda: make_idefics3(smolvlm=True),
}
RUNNER_CLASS = {"llava": Llava15Runner, "llava_next": AnyResolutionRunner, "llava_onevision": AnyResolutionRunner,
                "qwen2_vl": Qwen2VLRunner, "qwen2_5_vl": Qwen2VLRunner, "idefics3": Idefics3Runner,
                "smolvlm": Idefics3Runner}


@pytest.fixture(scope="module")
def pictures():
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()).resize((48, 40)), Image.fromarray(data.coffee()).resize((32, 64))]


@pytest.fixture(scope="module", params=list(FAMILIES))
def runner(request, tmp_path_factory):
    if request.param == "llava":  # a folder with tokenizer + image processor only: the runner builds the processor
        folder = tmp_path_factory.mktemp("llava")
        make_llava(folder)
        return create_vlm(str(folder))
    model, processor = FAMILIES[request.param]()
    return create_vlm(model, processor)


def own_generate(runner, prompt, images, max_new_tokens=6):
    text = runner.render(prompt, images)
    inputs = runner.processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        out = runner.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=runner.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_family_is_picked_from_the_config(runner):
    assert isinstance(runner, RUNNER_CLASS[runner.model.config.model_type])


def test_every_token_kept_is_the_models_own_generate(runner, pictures):
    for images in (pictures[:1], pictures):
        prompt = " and ".join(["<image>"] * len(images)) + " what?"
        out = runner.generate(prompt, images, max_new_tokens=6)
        assert out.token_ids == own_generate(runner, prompt, images)
        assert out.visual_tokens == out.visual_tokens_full == out.visual_tokens_after_prune


@pytest.mark.parametrize("method", ["visionzip", "prumerge", "tome", "vision_random", "vision_pool"])
def test_k_tokens_give_k_visual_places(runner, pictures, method):
    k = 6
    batch = runner.prepare(["Look <image> and <image>"], [pictures], create_compressor(method, tokens=k))
    assert int((batch.input_ids == runner.image_token_id).sum()) == 2 * k
    assert [image.k for image in batch.images] == [k, k]
    full = runner.prepare(["Look <image> and <image>"], [pictures])
    assert batch.input_ids.shape[1] == full.input_ids.shape[1] - sum(i.full - k for i in full.images)
    out = runner.generate("Look <image> and <image>", pictures, create_compressor(method, tokens=k), max_new_tokens=3)
    assert out.visual_tokens == 2 * k and len(out.token_ids) == 3 and out.visual_tokens_full > 2 * k


def test_batch_of_mixed_image_counts_equals_each_prompt_alone(runner, pictures):
    prompts = ["Look <image> now", "<image> then <image>, two", "no image at all? fine"]
    images = [pictures[:1], pictures[::-1], []]
    zip8 = create_compressor("visionzip", tokens=8)
    outs = runner.generate_batch(prompts, images, zip8, max_new_tokens=4)
    for prompt, pics, out in zip(prompts, images, outs):
        alone = runner.generate(prompt, pics, zip8, max_new_tokens=4)
        assert out.token_ids == alone.token_ids
        assert out.visual_tokens == 8 * len(pics)


def test_fastv_prunes_inside_the_llm(runner, pictures):
    full = runner.prepare(["Look <image> now"], [pictures[:1]]).images[0].full
    keep_all = runner.generate("Look <image> now", pictures[:1], create_compressor("fastv", tokens=full),
                               max_new_tokens=4)
    assert keep_all.token_ids == own_generate(runner, "Look <image> now", pictures[:1], 4)
    out = runner.generate("Look <image> now", pictures[:1], create_compressor("fastv", tokens=4), max_new_tokens=4)
    assert out.visual_tokens == out.visual_tokens_full and out.visual_tokens_after_prune == 4


def test_prumerge_adaptive_works_per_image(runner, pictures):
    out = runner.generate("<image> and <image>", pictures, create_compressor("prumerge", adaptive=True),
                          max_new_tokens=2)
    assert 2 <= out.visual_tokens < out.visual_tokens_full


def test_bad_inputs(runner, pictures):
    with pytest.raises(InvalidPromptError, match="marker"):
        runner.generate("<image> <image>", pictures[:1])
    with pytest.raises(ConfigError, match="not a visual-token reduction"):
        runner.generate("<image>", pictures[:1], compressor=create_compressor("random", rate=0.5))


def test_qwen_positions_are_the_kept_tokens_own(pictures):
    runner = create_vlm(*make_qwen2_vl())
    full = runner.prepare(["Look <image> now"], [pictures[:1]])
    # keeping every token in order through the reduction path is the full layout, positions included
    every = runner.prepare(["Look <image> now"], [pictures[:1]],
                           create_compressor("vision_strided", tokens=full.images[0].full))
    assert torch.equal(every.position_ids, full.position_ids) and torch.equal(every.input_ids, full.input_ids)
    reduced = runner.prepare(["Look <image> now"], [pictures[:1]], create_compressor("vision_random", tokens=5))
    image_cols = (full.input_ids[0] == runner.image_token_id).nonzero().squeeze(1)
    kept = image_cols[reduced.images[0].anchors]
    places = (reduced.input_ids[0] == runner.image_token_id).nonzero().squeeze(1)
    assert torch.equal(reduced.position_ids[1:, 0, places], full.position_ids[1:, 0, kept])
    # text after the image keeps its position: generation continues where the full layout would
    assert torch.equal(reduced.position_ids[1:, 0, -1], full.position_ids[1:, 0, -1])


def test_unsupported_family_is_a_clear_error():
    from mmcompress.vision.runners import runner_class

    with pytest.raises(ConfigError, match="supported: llava"):
        runner_class("blip-2")


def test_adjacent_images_keep_their_own_tokens(pictures, tmp_path):
    """Two markers side by side make one placeholder run; each image's tokens must stay its own (LLaVA-1.5: keeping
    all 64 tokens in order through the reduction path is exactly the model's own output)."""
    make_llava(tmp_path)
    runner = create_vlm(str(tmp_path))
    prompt = "<image><image> which?"
    every = runner.generate(prompt, pictures, create_compressor("vision_strided", tokens=64), max_new_tokens=5)
    assert every.token_ids == own_generate(runner, prompt, pictures, 5)
    swapped = runner.generate(prompt, pictures[::-1], create_compressor("vision_strided", tokens=64), max_new_tokens=5)
    assert swapped.token_ids == own_generate(runner, prompt, pictures[::-1], 5)


def test_tile_budget_is_shared():
    from mmcompress.vision.runners import split_budget_over_tiles

    assert split_budget_over_tiles(64, 5) == [13, 13, 13, 13, 12]
    assert split_budget_over_tiles(3, 5) == [1, 1, 1, 0, 0] and sum(split_budget_over_tiles(17, 4)) == 17
