"""`mmcompress compress --method <vision method> --tokens K --image ... [--model <llava folder>]` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmcompress.cli import main
from vision_tiny import make_llava


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava-cli")
    make_llava(folder)
    return folder


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_compress_with_llava(llava_dir, cat_png, capsys):
    code = main(["compress", "--method", "visionzip", "--tokens", "8", "--image", str(cat_png),
                 "What is in <image>?", "--model", str(llava_dir), "--max-new-tokens", "3", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["visual_tokens_full"] == 64 and record["visual_tokens"] == 8 and record["tokens_saved"] == 56


def test_fastv_config_by_name_with_two_images(llava_dir, cat_png, capsys):
    code = main(["compress", "--method", "fastv-k2-r50", "--image", str(cat_png), "--image", str(cat_png),
                 "<image> vs <image>", "--model", str(llava_dir), "--max-new-tokens", "2"])
    assert code == 0
    out = capsys.readouterr().err  # the statistics line goes to stderr
    assert "visual tokens 128 -> 64 (64 saved)" in out


def test_without_a_model_images_are_only_encoded(cat_png, capsys):
    code = main(["compress", "--method", "tome", "--tokens", "4", "--image", str(cat_png), "A <image> here",
                 "--set", "encoder=open_clip:mmc-vit-micro"])
    assert code == 0
    assert "visual tokens 16 -> 4 (12 saved)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--tokens", "65"], "only 64 patch tokens"),
    (["--image", "EXTRA"], "1 <image> marker(s) but 2 image(s)"),
])
def test_cli_errors_exit_2(llava_dir, cat_png, capsys, argv, message):
    argv = [a if a != "EXTRA" else str(cat_png) for a in argv]
    code = main(["compress", "--method", "visionzip", "--image", str(cat_png), "Look at <image>",
                 "--model", str(llava_dir), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unreadable_image_and_missing_image(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    assert main(["compress", "--method", "visionzip", "--image", str(bad), "<image> hi",
                 "--set", "encoder=open_clip:mmc-vit-micro", "--tokens", "4"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["compress", "--method", "visionzip", "<image> hi"]) == 2
    assert "--image" in capsys.readouterr().err


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from vision_tiny_families import make_qwen2_vl

    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    model, processor = make_qwen2_vl()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_qwen2_vl_folder_json_reports_tokens_and_prefill(qwen_dir, cat_png, capsys):
    code = main(["compress", "--method", "visionzip", "--tokens", "4", "--image", str(cat_png),
                 "What is in <image>?", "--model", str(qwen_dir), "--max-new-tokens", "2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["family"] == "qwen2_vl" and record["visual_tokens"] == 4
    assert record["visual_tokens_full"] > 4 and record["timings"]["prefill"] > 0
    assert record["timings"]["prefill"] <= record["timings"]["total"]


def test_image_overlay_marks_kept_merged_and_dropped_patches(cat_png, tmp_path, capsys):
    from PIL import Image

    from mmcompress.vision.overlay import DROPPED_DIM, MERGED_OUTLINE

    out = tmp_path / "overlay.png"
    code = main(["compress", "--method", "tome", "--tokens", "4", "--image", str(cat_png), "--image", str(cat_png),
                 "<image> and <image>", "--set", "encoder=open_clip:mmc-vit-micro", "--image-overlay", str(out),
                 "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape == (448, 896, 3)  # two 448 px tiles side by side, a 4 x 4 grid of 112 px cells
    original = np.asarray(Image.open(cat_png).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)).astype(int)
    kept = set(record["kept_indices"][0])
    assert len(kept) == 4
    for patch in range(16):
        row, col = divmod(patch, 4)
        inner = (slice(row * 112 + 10, row * 112 + 102), slice(col * 112 + 10, col * 112 + 102))
        ratio = picture[inner].mean() / original[inner].mean()
        if patch in kept:
            assert abs(ratio - 1) < 0.02, (patch, ratio)  # kept: the image as it is
        else:
            assert abs(ratio - DROPPED_DIM) < 0.05, (patch, ratio)  # dropped: darkened
    # ToMe merges all 12 dropped patches into the 4 kept ones: at least one outline is the merge colour
    edges = picture[:, :448].reshape(-1, 3)
    assert (np.abs(edges - MERGED_OUTLINE).max(axis=1) < 10).sum() > 100


def test_image_overlay_is_refused_for_text_methods(tmp_path, capsys):
    code = main(["compress", "Some text to compress here.", "--method", "random", "--image-overlay",
                 str(tmp_path / "x.png")])
    assert code == 2 and "not a vision method" in capsys.readouterr().err


def test_device_and_model_kwargs_reach_the_vlm(llava_dir, cat_png, capsys, monkeypatch):
    from transformers import AutoModelForImageTextToText

    import mmcompress.vision.runners as runners

    loads, calls = [], []
    real_load = AutoModelForImageTextToText.from_pretrained.__func__
    real_create = runners.create_vlm

    def spy_load(cls, path, *args, **kwargs):
        loads.append(kwargs)
        return real_load(cls, path, *args, **kwargs)

    def spy_create(*args, **kwargs):
        calls.append(kwargs)
        runner = real_create(*args, **kwargs)
        calls[-1]["attn"] = runner.model.config._attn_implementation
        return runner

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy_load))
    monkeypatch.setattr(runners, "create_vlm", spy_create)
    code = main(["compress", "--method", "visionzip", "--tokens", "8", "--image", str(cat_png), "What is <image>?",
                 "--model", str(llava_dir), "--max-new-tokens", "2", "--device", "cpu",
                 "--model-kwargs", '{"attn_implementation": "eager"}', "--json"])
    assert code == 0, capsys.readouterr().err
    assert loads and loads[-1]["attn_implementation"] == "eager"
    assert calls[-1]["device"] == "cpu" and calls[-1]["attn"] == "eager"


@pytest.mark.parametrize("flags, words", [
    (["--model-kwargs", "{bad"], "not valid JSON"),
    (["--model-kwargs", "[1]"], "expected a JSON object"),
    (["--model-kwargs", '{"device_map": {"nowhere": 7}}'], "refused model_kwargs"),
])
def test_bad_model_kwargs_for_a_vlm_is_one_line_exit_2(llava_dir, cat_png, capsys, flags, words):
    try:
        code = main(["compress", "--method", "visionzip", "--tokens", "8", "--image", str(cat_png), "<image>?",
                     "--model", str(llava_dir), *flags])
    except SystemExit as e:  # argparse rejects what is not a JSON object
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_model_kwargs_without_a_vlm_is_an_error(cat_png, capsys):
    code = main(["compress", "--method", "tome", "--tokens", "4", "--image", str(cat_png), "A <image> here",
                 "--set", "encoder=open_clip:mmc-vit-micro", "--model-kwargs", '{"attn_implementation": "eager"}'])
    assert code == 2 and "give the VLM with --model" in capsys.readouterr().err
