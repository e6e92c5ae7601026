"""The interleaved compressor on tiny models: batched embedding, chunking, gradients, generate, save/load, LLaVA
decoder, CLI and YAML, and a toy interleaved task learned on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcompress.multimodal.interleaved import InterleavedCompressor
from mmcompress.prompt import Prompt

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def _solid(name: str, size: int = 32, shade: int = 0) -> np.ndarray:
    return np.full((size, size, 3), np.clip(np.add(COLOURS[name], shade), 0, 255), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_parts():
    from tiny_models import make_bpe_tokenizer, make_llama

    tok = make_bpe_tokenizer()
    return tok, make_llama


def _make(tiny_parts, style: str = "icae", mode: str = "soft", seed: int = 0, **kw) -> InterleavedCompressor:
    tok, make_llama = tiny_parts
    torch.manual_seed(seed)
    fields = dict(num_slots=4, chunk_tokens=40, style=style, mode=mode, vision_encoder="open_clip:mmc-vit-micro",
                  adapter="mlp", image_tokens=None, lora_r=4, max_new_tokens=4)
    fields.update(kw)
    return InterleavedCompressor(model=make_llama(tok, window=512, seed=seed), tokenizer=tok, **fields)


@pytest.fixture(scope="module")
def icae(tiny_parts):
    return _make(tiny_parts)


def test_batched_embedding_matches_single_prompt_embedding(icae):
    prompts = [Prompt.from_interleaved("Photo A: <image> Photo B: <image> Which one is red?", [_solid("red"), _solid("blue")]),
               Prompt.from_interleaved("One more: <image> done. What colour?", [_solid("green")])]
    items = [icae.example_item(p, "red") for p in prompts]
    batch = icae.collate(items)
    module = icae.module
    with torch.no_grad():
        embeds = module.embed_chunks(batch)
        for b, prompt in enumerate(prompts):
            layout_seq = icae.embedder().embed(icae.layout(prompt)[1].compressed)
            rows = (batch["chunk_span"] == b).nonzero().flatten()
            got = torch.cat([embeds[r][batch["chunk_mask"][r].bool()] for r in rows])
            assert torch.allclose(got, layout_seq.embeds, atol=1e-6)


def test_training_chunks_never_split_an_image(icae):
    k = icae.tokens_per_image
    images = [_solid(c) for c in ("red", "green", "blue", "red", "green")]
    prompt = Prompt.from_interleaved("Intro. " + " then ".join(["<image>"] * 5) + " What?", images)
    batch = icae.collate([icae.example_item(prompt, "x")])
    assert batch["chunk_ids"].shape[0] > 1 and batch["chunk_mask"].sum(1).max() <= icae.config.chunk_tokens
    for i in range(5):
        rows = (batch["chunk_image"] == i).any(1).nonzero().flatten()
        assert len(rows) == 1 and int((batch["chunk_image"] == i).sum()) == k


@pytest.mark.parametrize("style", ["icae", "kv"])
def test_gradients_reach_adapter_and_encoder_only(tiny_parts, style):
    comp = _make(tiny_parts, style=style)
    prompt = Prompt.from_interleaved("A: <image> B: <image> Which one is red?", [_solid("red"), _solid("blue")])
    batch = comp.collate([comp.example_item(prompt, "the first")] * 2)
    module = comp.module
    module.train()
    module.zero_grad()
    module.training_step(batch)["loss"].backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any(".adapter." in n for n in trained) and any("lora_" in n for n in trained)
    assert {"markers", "encoder.slots"} <= trained
    assert not any("image_path.encoder." in n for n in trained)  # the vision tower is frozen
    assert not any(("lora_" not in n and ".adapter." not in n and n not in ("markers", "encoder.slots")) for n in trained)
    # every trained part gets a gradient (in kv style the last layer's MLP feeds no cached key/value, so LoRA there
    # has none: that is the method, not a leak)
    essential = [n for n in trained if "lora_" not in n or ".layers.0." in n]
    assert all(grads[n] is not None for n in essential), [n for n in essential if grads[n] is None]
    assert any(grads[n].abs().sum() > 0 for n in trained if ".adapter." in n and grads[n] is not None)
    assert all(grads[n] is None for n in grads if n not in trained)


@pytest.mark.parametrize("style", ["icae", "kv"])
def test_compress_generate_and_save_load_round_trip(tiny_parts, tmp_path, style):
    from mmcompress import create_compressor

    comp = _make(tiny_parts, style=style)
    with torch.no_grad():  # move the LoRA off zero so a lost adapter would show in the outputs
        for n, p in comp.module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    text = "Photo A: <image> Photo B: <image> Which one is red?"
    images = [_solid("red"), _solid("blue")]
    soft = comp.compress(text, images=images)
    item = soft.items[0]
    assert [type(p).__name__ for p in item] == ["SoftSegment", "TextSegment"]
    assert item[1].text == "Which one is red?"  # the question stays text
    assert soft.soft_tokens == [comp.config.num_slots * item[0].chunks]
    k = comp.tokens_per_image
    n_text = len(comp.tokenizer("Photo A:  Photo B:  ", add_special_tokens=False)["input_ids"])
    assert abs(soft.origin_tokens[0] - (2 * k + n_text + len(comp.tokenizer("Which one is red?")["input_ids"]))) <= 3
    answer = comp.generate(soft)
    assert isinstance(answer[0], str)
    path = comp.save_pretrained(tmp_path / "saved")
    assert (path / "image_path.safetensors").exists()
    _, make_llama = tiny_parts
    loaded = create_compressor(str(path), model=make_llama(comp.tokenizer, window=512, seed=0), tokenizer=comp.tokenizer)
    assert isinstance(loaded, InterleavedCompressor) and loaded.config.style == style
    again = loaded.compress(text, images=images)
    first = soft.items[0][0]
    second = again.items[0][0]
    if style == "icae":
        assert torch.allclose(first.embeddings, second.embeddings, atol=1e-5)
    else:
        assert all(torch.allclose(a[0], b[0], atol=1e-5) for a, b in zip(first.kv, second.kv))
    assert loaded.generate(again) == answer


def test_full_mode_is_the_uncompressed_reference(tiny_parts):
    comp = _make(tiny_parts, mode="full")
    text = "Photo A: <image> Photo B: <image> Which one is red?"
    soft = comp.compress(text, images=[_solid("red"), _solid("blue")])
    seg = soft.items[0][0]
    assert seg.num_tokens == seg.origin_tokens and soft.ratio == pytest.approx(1.0)
    trained = [n for n, p in comp.module.named_parameters() if p.requires_grad]
    assert trained and all(".adapter." in n for n in trained)
    assert isinstance(comp.generate(soft)[0], str)


def test_soft_model_starts_from_the_full_models_image_path(tiny_parts, tmp_path):
    from mmcompress.errors import ConfigError

    full = _make(tiny_parts, mode="full", seed=1)
    with torch.no_grad():  # a "trained" adapter: different from any fresh initialisation
        for p in full.image_path.adapter.parameters():
            p.add_(0.25)
    saved = full.save_pretrained(tmp_path / "full")
    soft = _make(tiny_parts, seed=2)
    pixels = soft.image_path.preprocess([_solid("red")])
    assert not torch.allclose(soft.image_path(pixels), full.image_path(pixels))
    soft.load_image_path(saved)
    assert torch.allclose(soft.image_path(pixels), full.image_path(pixels))  # same tower and adapter now
    assert all(p.requires_grad for p in soft.image_path.adapter.parameters())  # still trained by the soft run
    other = _make(tiny_parts, seed=2, adapter="perceiver", image_tokens=4)
    with pytest.raises(ConfigError, match="does not fit"):
        other.load_image_path(saved)
    with pytest.raises(ConfigError, match="no image path weights"):
        soft.load_image_path(tmp_path / "missing")


def test_prompt_errors_are_clear(icae):
    from mmcompress.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError, match="1 <image> marker"):
        icae.compress("A: <image>", images=[])
    with pytest.raises(InvalidPromptError, match="nothing to compress"):
        icae.compress(Prompt.from_documents([], question="Only a question?"))


def test_llava_decoder(tmp_path):
    from vision_tiny import make_llava

    model, tok = make_llava(image_size=32, patch=8)
    comp = InterleavedCompressor(model=model, tokenizer=tok, num_slots=4, chunk_tokens=64, lora_r=4, max_new_tokens=3)
    assert comp.uses_llava and comp.tokens_per_image == 16
    images = [_solid("red"), _solid("blue")]
    prompt = Prompt.from_interleaved("Photo A: <image> Photo B: <image> Which one is red?", images)
    batch = comp.collate([comp.example_item(prompt, "the first")])
    module = comp.module
    module.training_step(batch)["loss"].backward()
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trained)  # LLaVA's adapter trains
    assert not any("vision_tower" in n for n in trained)  # its tower does not
    assert not any("lora_" in n and "language_model" not in n for n in trained)  # LoRA only in the LLM
    grads = [p.grad for n, p in module.named_parameters() if "multi_modal_projector" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    soft = comp.compress(prompt)
    assert soft.soft_tokens == [4] and soft.origin_tokens[0] > 32
    out = comp.generate(soft)
    assert len(out) == 1 and isinstance(out[0], str)
    # the LLaVA model's own image embedding (tower + projector) is what lands at the markers
    feats = comp.image_path(comp.image_path.preprocess(images))
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=comp.image_path.preprocess(images)).pooler_output
    assert torch.allclose(feats, torch.stack(list(ref)), atol=1e-5)


def _toy_examples(n: int, seed: int, held_out: bool = False):
    """Two squares of the 3 colours, each in its own shade: even shade offsets for training, odd ones held out, so
    no held-out image (hence no held-out example) equals a training one (3 colours alone give only 12 examples)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        target = int(rng.integers(2))
        colour = names[(a, b)[target]]
        shades = 2 * rng.integers(-3, 4, size=2) + int(held_out)
        prompt = Prompt.from_interleaved(f"A: <image> B: <image> Which is {colour}?",
                                         [_solid(names[a], shade=shades[0]), _solid(names[b], shade=shades[1])])
        out.append((prompt, "A" if target == 0 else "B"))
    return out


def _example_key(prompt, answer):
    return prompt.text, answer, tuple(np.asarray(s.image).tobytes() for s in prompt.segments if hasattr(s, "image"))


def test_toy_held_out_examples_are_not_training_examples():
    train = {_example_key(*ex) for ex in _toy_examples(64, 0)}
    held = [_example_key(*ex) for ex in _toy_examples(24, 1, held_out=True)]
    assert len(train) > 12 and not train.intersection(held)


def _learnable_llama(tokenizer, seed: int = 0):
    """A tiny Llama whose random logits are not flat (larger init), so a frozen random decoder can be steered."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=True, pad_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config).eval()


def test_toy_interleaved_task_is_learned_on_cpu(tiny_parts, tmp_path, one_thread):
    """Two coloured squares and "Which is red?" -> "A" / "B": compressed to 4 shared soft tokens, answered by the
    frozen decoder. The answer needs both images and the question's colour, so text alone cannot give it."""
    from mmcompress.multimodal.tasks import answer_correct
    from mmcompress.multimodal.training import ItemDataset
    from mmcompress.training import TrainConfig, Trainer

    tok, _ = tiny_parts
    torch.manual_seed(0)
    comp = InterleavedCompressor(model=_learnable_llama(tok), tokenizer=tok, num_slots=4, chunk_tokens=40,
                                 vision_encoder="open_clip:mmc-vit-micro", adapter="mlp", image_tokens=None, lora_r=8,
                                 lora_alpha=16, max_new_tokens=5)
    test = _toy_examples(24, 1, held_out=True)
    comp.module.eval()
    before = np.mean([answer_correct(a, g) for a, (_, g) in zip(comp.answer([p for p, _ in test], batch_size=24), test)])
    train = [comp.example_item(p, a) for p, a in _toy_examples(256, 0)]
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=120, batch_size=16, lr=1e-2, schedule="constant", max_grad_norm=0.0,
                         log_every=30, progress=False, seed=0)
    # a fixed budget of 120 steps (seconds on a 2-core CPU); wall time is a benchmark's business, not a test's
    Trainer(comp.module, config, ItemDataset(train), None, comp.collate).train()
    comp.module.eval()
    answers = comp.answer([p for p, _ in test], batch_size=24)
    accuracy = np.mean([answer_correct(a, g) for a, (_, g) in zip(answers, test)])
    assert before <= 0.6 and accuracy >= 0.9, (before, accuracy, answers[:6])


def test_nested_slots_are_prefixes_of_the_full_set(tiny_parts):
    comp = _make(tiny_parts, num_slots=6, slot_schedule=[2, 4, 6], chunk_tokens=64)
    text = "Photo A: <image> Photo B: <image> Which one is red?"
    images = [_solid("red"), _solid("blue")]
    comp.module.eval()
    full = comp.compress(text, images=images)
    two = comp.set_slots(2).compress(text, images=images)
    assert full.soft_tokens == [6] and two.soft_tokens == [2] and two.ratio > full.ratio
    # slots are causal: the first two of six are exactly what a two-slot read gives
    assert torch.allclose(two.items[0][0].embeddings, full.items[0][0].embeddings[:2], atol=1e-6)
    comp.set_slots(None)
    comp.module.train()
    drawn = {comp.module.active_slots() for _ in range(40)}
    comp.module.eval()
    assert drawn == {2, 4, 6}
    from mmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="num_slots=6"):
        _make(tiny_parts, num_slots=6, slot_schedule=[8])


def test_yaml_config_and_cli_with_a_saved_compressor(tiny_dir, tmp_path, capsys):
    from PIL import Image

    from mmcompress import create_compressor

    config = tmp_path / "interleaved.yaml"
    config.write_text(f"compressor: interleaved\nmodel: {tiny_dir}\nnum_slots: 4\nchunk_tokens: 64\n"
                      "vision_encoder: open_clip:mmc-vit-micro\nadapter: mlp\nimage_tokens: null\nlora_r: 4\n"
                      "max_new_tokens: 3\ndevice: cpu\ndtype: float32\n")
    comp = create_compressor(str(config))
    assert isinstance(comp, InterleavedCompressor) and comp.config.num_slots == 4
    assert create_compressor("interleaved-shapes").config.adapter == "perceiver"  # shipped config, by stem
    saved = comp.save_pretrained(tmp_path / "saved")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(_solid("red")).save(a)
    Image.fromarray(_solid("blue")).save(b)
    from mmcompress.cli import main

    args = ["compress", "--method", str(saved), "--image", str(a), "--image", str(b)]
    assert main(args + ["Photo A: <image> Photo B: <image> Which one is red?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "interleaved" and isinstance(out["answer"], str)
    pieces = out["prompts"][0]["pieces"]
    assert [p["kind"] for p in pieces] == ["embeddings", "text"] and pieces[1]["text"] == "Which one is red?"
    assert pieces[0]["soft_tokens"] == 4 and out["origin_tokens"] > 2 * comp.tokens_per_image
    # three markers for two images: a one-line error and exit code 2
    assert main(args + ["A: <image> B: <image> C: <image>"]) == 2
    assert "3 <image> marker(s) but 2 image(s)" in capsys.readouterr().err


@pytest.mark.shared
def test_training_recipe_runs_and_loads(tiny_dir, tmp_path):
    pytest.importorskip("easy_vqa")
    import yaml

    from mmcompress import create_compressor
    from mmcompress.cli import main

    recipe = {
        "task": "interleaved",
        "model": {"model": str(tiny_dir), "num_slots": 4, "slot_schedule": [2, 4], "chunk_tokens": 64, "lora_r": 4,
                  "vision_encoder": "open_clip:mmc-vit-micro", "adapter": "pool", "image_tokens": 4,
                  "device": "cpu", "dtype": "float32", "max_new_tokens": 3},
        "data": {"source": "shapes", "train_examples": 8, "eval_examples": 2, "num_images": [2], "max_images": 60,
                 "mix": {"qa": 1.0, "caption": 0.5, "ae": 0.5}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "lr": 1.0e-3,
                  "log_every": 1, "progress": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path)]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and any("eval/loss" in r for r in log)
    loaded = create_compressor(str(tmp_path / "run" / "final"))
    assert isinstance(loaded, InterleavedCompressor) and loaded.config.slot_schedule == [2, 4]
    from mmcompress.multimodal.tasks import build_examples

    example = build_examples("shapes", "test", 1, num_images=(2,), max_images=30)[0]
    assert len(loaded.answer([example.prompt()])) == 1


@pytest.mark.shared
def test_shipped_shapes_recipes_chain_caption_full_soft(tiny_dir, tmp_path):
    """The three shipped easy-VQA recipes run in order (shrunk to a tiny model): each stage starts its image path from
    the folder the previous stage writes, the random-init tower trains in the first two, and the soft stage decodes
    with the LLM tuned in the second."""
    pytest.importorskip("easy_vqa")
    import yaml
    from safetensors.torch import load_file

    from mmcompress.cli import main
    from mmcompress.multimodal.decoder_lora import DECODER_LORA_DIR, INHERITED_LORA_DIR
    from mmcompress.multimodal.interleaved import IMAGE_PATH_FILE
    from mmcompress.multimodal.training import build_interleaved
    from mmcompress.training.tasks import load_recipe

    stages = ["caption", "full", "soft"]
    shipped = {s: load_recipe(f"configs/train/interleaved-shapes-{s}.yaml") for s in stages}
    # as shipped, each stage reads the folder its predecessor writes
    assert shipped["full"]["init_image_path"] == shipped["caption"]["train"]["output_dir"] + "/final"
    assert shipped["soft"]["init_image_path"] == shipped["full"]["train"]["output_dir"] + "/final"
    assert shipped["full"]["model"]["tune_decoder"]  # LLaVA's stage 2 tunes the LLM; the soft stage decodes with it
    assert shipped["soft"]["model"]["decoder_lora"] == shipped["full"]["train"]["output_dir"] + "/final"
    tiny = {"model.model": str(tiny_dir), "model.vision_encoder": "open_clip:mmc-vit-micro", "model.image_tokens": 4,
            "model.device": "cpu", "model.num_slots": 4, "model.slot_schedule": [2, 4], "model.lora_r": 4,
            "data.train_examples": 4, "data.eval_examples": 2, "data.max_images": 40, "train.max_steps": 1,
            "train.batch_size": 2, "train.eval_every": 0, "train.save_every": 0, "train.progress": False,
            "train.mixed_precision": "no"}
    previous = None
    for stage in stages:
        overrides = {**tiny, "train.output_dir": str(tmp_path / stage)}
        if stage == "full":  # the full-mode reference has no slots
            overrides = {k: v for k, v in overrides.items() if "slot" not in k}
        if previous:
            overrides["init_image_path"] = str(previous)
        if stage == "soft":
            overrides["model.decoder_lora"] = str(previous)
        recipe = load_recipe(f"configs/train/interleaved-shapes-{stage}.yaml", overrides)
        setup = build_interleaved(recipe)
        path = setup.module.image_path
        # tower and adapter train in the first two stages; the soft stage reads the aligned path as it is
        assert all(p.requires_grad == (stage != "soft") for p in path.parameters())
        if stage == "caption":
            assert all(len(item.plan.images) == 1 for item in setup.train_dataset.items)
        if previous:  # starts exactly where the previous stage ended
            saved = load_file(str(previous / IMAGE_PATH_FILE))
            assert all(torch.equal(v, saved[k]) for k, v in path.state_dict().items())
        config = tmp_path / f"{stage}.yaml"
        config.write_text(yaml.safe_dump(recipe))
        assert main(["train", "--config", str(config)]) == 0
        previous = tmp_path / stage / "final"
        assert (previous / IMAGE_PATH_FILE).is_file()
        if stage == "full":
            assert (previous / DECODER_LORA_DIR / "adapter_config.json").is_file()
    assert (previous / INHERITED_LORA_DIR).is_dir()  # the soft model carries its tuned decoder

    # the question-aware stage 3 is the soft recipe with one switch: its encoder reads each example's question
    question = load_recipe("configs/train/interleaved-shapes-soft-question.yaml")
    assert question["model"].pop("question_aware") is True
    assert {**question, "train": {**question["train"], "output_dir": shipped["soft"]["train"]["output_dir"]}} == shipped["soft"]
    full = tmp_path / "full" / "final"
    overrides = {**tiny, "train.output_dir": str(tmp_path / "question"), "init_image_path": str(full),
                 "model.decoder_lora": str(full)}
    recipe = load_recipe("configs/train/interleaved-shapes-soft-question.yaml", overrides)
    setup = build_interleaved(recipe)
    assert all(item.query for item in setup.train_dataset.items if item.task == "qa")
    config = tmp_path / "question.yaml"
    config.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(config)]) == 0
    assert json.loads((tmp_path / "question" / "final" / "mmcompress_config.json").read_text())["config"]["question_aware"]


def test_small_vlm_of_the_vision_family(tiny_parts, tmp_path):
    from mmcompress import create_compressor
    from mmcompress.vision.adapters import create_adapter
    from mmcompress.vision.encoders import create_encoder
    from mmcompress.vision.small_vlm import SmallVLM

    tok, make_llama = tiny_parts
    torch.manual_seed(0)
    llm = make_llama(tok, window=512)
    encoder = create_encoder("open_clip:mmc-vit-micro")
    vlm = SmallVLM(encoder, create_adapter("perceiver", in_dim=32, out_dim=32, tokens=4, depth=1, heads=2, dim_head=8),
                   llm, tok, answers=["A", "B"])
    before = {n: p.clone() for n, p in vlm.llm.named_parameters()}
    comp = InterleavedCompressor.from_small_vlm(vlm, num_slots=2, chunk_tokens=64, lora_r=4, max_new_tokens=3)
    images = [_solid("red"), _solid("blue")]
    soft = comp.compress("Photo A: <image> Photo B: <image> Which one is red?", images=images)
    assert comp.tokens_per_image == 4 and soft.soft_tokens == [2]
    # the VLM's own adapter embeds the images; its LLM is copied, not modified
    pixels = comp.image_path.preprocess(images)
    with torch.no_grad():
        assert torch.allclose(comp.image_path(pixels), vlm.adapter(vlm.encoder(pixels).patch_tokens), atol=1e-6)
    assert not any("lora" in n for n, _ in vlm.llm.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in vlm.llm.named_parameters())
    assert len(comp.generate(soft)) == 1
    saved = comp.save_pretrained(tmp_path / "s")
    loaded = create_compressor(str(saved), model=make_llama(tok, window=512), tokenizer=tok)
    with torch.no_grad():
        assert torch.allclose(loaded.image_path(pixels), comp.image_path(pixels), atol=1e-6)


@pytest.mark.slow
def test_smollm2_compresses_an_interleaved_prompt(smollm2):
    """The embedded default: SmolLM2-135M as encoder (LoRA) and decoder, a random-init open_clip ViT + Perceiver."""
    import copy

    torch.manual_seed(0)  # a copy: LoRA is injected into the model it is given, and the fixture is shared
    comp = InterleavedCompressor(model=copy.deepcopy(smollm2.model), tokenizer=smollm2.tokenizer, num_slots=8,
                                 max_new_tokens=2,
                                 vision_encoder="open_clip:mmc-vit-tiny-p8-64", adapter="perceiver", image_tokens=16)
    text = "Photo A: <image> Photo B: <image> Photo C: <image> Which one shows a red shape?"
    soft = comp.compress(text, images=[_solid("red", 64), _solid("blue", 64), _solid("green", 64)])
    question = len(smollm2.tokenizer("Which one shows a red shape?", add_special_tokens=False)["input_ids"])
    assert soft.soft_tokens == [8] and soft.compressed_tokens == [8 + question]
    assert soft.origin_tokens[0] >= 3 * 16 + question + 6
    assert soft.items[0][0].embeddings.shape == (8, smollm2.model.config.hidden_size)
    assert isinstance(comp.generate(soft)[0], str)


@pytest.mark.parametrize("key", ["init_image_path", "init_from"])
def test_recipe_names_a_missing_start_folder(tiny_dir, tmp_path, key):
    from mmcompress.errors import ConfigError
    from mmcompress.multimodal.training import build_interleaved

    recipe = {"task": "interleaved", key: str(tmp_path / "runs" / "full" / "final"),
              "model": {"model": str(tiny_dir), "num_slots": 2, "vision_encoder": "open_clip:mmc-vit-micro",
                        "adapter": "mlp", "image_tokens": None, "lora_r": 4, "device": "cpu"}}
    with pytest.raises(ConfigError, match=f"{key}: .* does not exist; train the run that writes it first"):
        build_interleaved(recipe)


def _logits(llm, ids):
    with torch.no_grad():
        return llm(input_ids=ids).logits


def test_tuned_decoder_trains_lora_and_becomes_the_soft_models_decoder(tiny_parts, tmp_path):
    """LLaVA's second stage: the full-mode reference trains LoRA on the LLM with the image path; the soft model merges
    that adapter first, so its frozen decoder is the tuned LLM, and it keeps it through save/load."""
    import shutil

    from mmcompress import create_compressor
    from mmcompress.multimodal.decoder_lora import DECODER_LORA_DIR, INHERITED_LORA_DIR

    tok, make_llama = tiny_parts
    full = _make(tiny_parts, mode="full", seed=1, tune_decoder=True)
    module = full.module
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trained) and any(".adapter." in n for n in trained)
    assert all("lora_" in n or ".adapter." in n for n in trained)  # base weights stay frozen
    prompt = Prompt.from_interleaved("A: <image> B: <image> Which one is red?", [_solid("red"), _solid("blue")])
    module.train()
    module.training_step(full.collate([full.example_item(prompt, "the first")]))["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in module.named_parameters() if n not in trained)
    module.eval()
    with torch.no_grad():  # a "tuned" decoder: far from the base model
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([tok("Which one is red?")["input_ids"]])
    tuned = _logits(full.llm, ids)
    base = _logits(make_llama(tok, window=512, seed=1), ids)
    assert not torch.allclose(tuned, base, atol=1e-3)

    saved = full.save_pretrained(tmp_path / "full")
    assert (saved / DECODER_LORA_DIR / "adapter_config.json").is_file()  # a standard peft adapter
    loaded = create_compressor(str(saved), model=make_llama(tok, window=512, seed=1), tokenizer=tok)
    assert torch.allclose(_logits(loaded.llm, ids), tuned, atol=1e-5)

    soft = _make(tiny_parts, seed=1, decoder_lora=str(saved))
    with soft.decoder_mode():
        assert torch.allclose(_logits(soft.llm, ids), tuned, atol=1e-4)  # the frozen decoder is the tuned LLM
    assert not any("decoder_lora" in n for n, p in soft.module.named_parameters() if p.requires_grad)
    soft_saved = soft.save_pretrained(tmp_path / "soft")
    shutil.rmtree(saved)  # the soft model carries its decoder's adapter with it
    again = create_compressor(str(soft_saved), model=make_llama(tok, window=512, seed=1), tokenizer=tok)
    assert (soft_saved / INHERITED_LORA_DIR).is_dir()
    with again.decoder_mode():
        assert torch.allclose(_logits(again.llm, ids), tuned, atol=1e-4)
    text = "Photo A: <image> Photo B: <image> Which one is red?"
    assert again.generate(again.compress(text, images=[_solid("red"), _solid("blue")])) == \
        soft.generate(soft.compress(text, images=[_solid("red"), _solid("blue")]))


def test_decoder_tuning_errors_are_clear(tiny_parts, tmp_path):
    from mmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="tune_decoder applies to mode='full'"):
        _make(tiny_parts, tune_decoder=True)
    with pytest.raises(ConfigError, match="stack two decoder adapters"):
        _make(tiny_parts, mode="full", tune_decoder=True, decoder_lora=str(tmp_path))
    missing = _make(tiny_parts, decoder_lora=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no decoder LoRA at .*tune_decoder: true"):
        missing.module  # noqa: B018


def test_train_adapter_false_freezes_the_aligned_image_path(tiny_parts, tmp_path):
    """A soft stage may keep the image path it starts from as it is: only LoRA, slots and markers train, and the
    saved image path still travels with the model."""
    from mmcompress import create_compressor

    comp = _make(tiny_parts, seed=3, train_adapter=False)
    trained = {n for n, p in comp.module.named_parameters() if p.requires_grad}
    assert trained and not any("image_path." in n for n in trained)
    assert any("lora_" in n for n in trained) and {"markers", "encoder.slots"} <= trained
    with torch.no_grad():
        for p in comp.image_path.adapter.parameters():
            p.add_(0.25)
    pixels = comp.image_path.preprocess([_solid("red")])
    saved = comp.save_pretrained(tmp_path / "frozen")
    _, make_llama = tiny_parts
    loaded = create_compressor(str(saved), model=make_llama(comp.tokenizer, window=512, seed=3),
                               tokenizer=comp.tokenizer)
    assert torch.allclose(loaded.image_path(pixels), comp.image_path(pixels), atol=1e-6)


def test_question_aware_encoder_reads_the_question_after_every_chunk(tiny_parts, tmp_path):
    from mmcompress import create_compressor
    from mmcompress.errors import ConfigError, InvalidPromptError

    aware = _make(tiny_parts, style="kv", question_aware=True, chunk_tokens=24)
    agnostic = _make(tiny_parts, style="kv", chunk_tokens=24)
    context = "Intro text. A: <image> B: <image> C: <image> "
    images = [_solid("red"), _solid("green"), _solid("blue")]
    asks = ["What colour is B?", "What colour is C?"]
    prompts = [Prompt.from_interleaved(context + q, images) for q in asks]

    batch = aware.collate([aware.example_item(prompts[0], "green")])
    query = aware.tokenizer("\n\n" + asks[0], add_special_tokens=False)["input_ids"]
    assert batch["chunk_ids"].shape[0] > 1  # several chunks, each ends with the question
    for row in range(batch["chunk_ids"].shape[0]):
        assert batch["chunk_ids"][row, -len(query):].tolist() == query
        assert (batch["chunk_image"][row, -len(query):] == -1).all()
    plain = agnostic.collate([agnostic.example_item(prompts[0], "green")])
    assert int(batch["chunk_mask"].sum()) == int(plain["chunk_mask"].sum()) + len(query) * batch["chunk_ids"].shape[0]

    def kv(comp, prompt):
        comp.module.eval()
        soft = comp.compress(prompt)
        return soft, soft.items[0][0].kv

    (soft_b, kv_b), (_, kv_c) = kv(aware, prompts[0]), kv(aware, prompts[1])
    # the soft tokens depend on what is asked (from layer 1 on: layer 0's keys come from the slot embeddings alone)
    assert not torch.allclose(kv_b[-1][0], kv_c[-1][0])
    (plain_b, plain_kv_b), (_, plain_kv_c) = kv(agnostic, prompts[0]), kv(agnostic, prompts[1])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain_kv_b, plain_kv_c))
    # the question is read, not compressed: the ratio and the kept text are those of the question-agnostic model
    assert soft_b.origin_tokens == plain_b.origin_tokens and soft_b.items[0][1].text == asks[0]
    assert isinstance(aware.generate(soft_b)[0], str)

    path = aware.save_pretrained(tmp_path / "aware")
    _, make_llama = tiny_parts
    loaded = create_compressor(str(path), model=make_llama(aware.tokenizer, window=512, seed=0),
                               tokenizer=aware.tokenizer)
    assert loaded.config.question_aware and torch.allclose(kv(loaded, prompts[0])[1][-1][0], kv_b[-1][0], atol=1e-5)

    with pytest.raises(InvalidPromptError, match="question_aware"):
        aware.compress("Look: <image> and <image>.", images=images[:2])  # nothing is kept as text
    with pytest.raises(ConfigError, match="question_aware"):
        _make(tiny_parts, mode="full", question_aware=True)


def test_mode_picks_the_class_and_style_the_slot_strategy():
    """The reference and the soft compressor are separate classes behind one registered name; the slot style is a
    strategy object chosen from the config."""
    from mmcompress import ConfigError, create_compressor
    from mmcompress.multimodal.interleaved import InterleavedReference, InterleavedSoftCompressor
    from mmcompress.multimodal.models import InterleavedFullModel, InterleavedKvModel
    from mmcompress.multimodal.slot_styles import IcaeSlots, KvSlots

    full = create_compressor("interleaved", mode="full")
    assert type(full) is InterleavedReference and isinstance(full, InterleavedCompressor)
    assert full.marker("qa") is None and full.module_class is InterleavedFullModel
    soft = InterleavedCompressor(style="kv")
    assert type(soft) is InterleavedSoftCompressor and isinstance(soft.slots, KvSlots)
    assert soft.module_class is InterleavedKvModel
    assert isinstance(InterleavedCompressor(soft.config.replace(style="icae")).slots, IcaeSlots)
    assert type(InterleavedCompressor(full.config, mode="soft")) is InterleavedSoftCompressor  # overrides win
    with pytest.raises(ConfigError, match="mode='full'"):
        InterleavedSoftCompressor(mode="full")
