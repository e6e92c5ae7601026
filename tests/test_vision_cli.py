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
    out = capsys.readouterr().out
    assert "visual tokens 128 -> 64 (64 saved)" in out


def test_without_a_model_images_are_only_encoded(cat_png, capsys):
    code = main(["compress", "--method", "tome", "--tokens", "4", "--image", str(cat_png), "A <image> here",
                 "--set", "encoder=open_clip:mmc-vit-micro"])
    assert code == 0
    assert "visual tokens 16 -> 4 (12 saved)" in capsys.readouterr().out


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
