"""Image encoders: open_clip by name (tiny registered configs), HF CLIP / SigLIP towers, preprocessing of every
input form, and attention maps that match the backbone's own attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcompress.errors import ConfigError, ImageError, ModelNotFoundError
from mmcompress.vision.encoders import (HFVisionEncoder, OpenCLIPEncoder, create_encoder,
                                        register_open_clip_config)
from vision_tiny import make_clip_vision, make_siglip_vision


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return create_encoder("open_clip:mmc-vit-micro").eval()


def test_open_clip_patch_tokens_and_attention(micro):
    from skimage import data

    out = micro.encode([data.astronaut(), data.camera()], output_attentions=True)
    assert out.patch_tokens.shape == (2, 16, 32)  # 32 px / patch 8 -> 4x4 grid
    assert out.cls_token.shape == (2, 32) and out.grid == (4, 4)
    assert out.attentions.shape == (2, 2, 17, 17)
    torch.testing.assert_close(out.attentions.sum(-1), torch.ones(2, 2, 17))
    assert out.cls_attention.shape == (2, 16)
    assert not torch.allclose(out.patch_tokens[0], out.patch_tokens[1])  # different images, different tokens


def test_open_clip_tokens_match_output_tokens(micro):
    """layer=-1 gives exactly what open_clip's own visual.output_tokens path returns."""
    pixels = torch.randn(2, 3, 32, 32)
    micro.visual.output_tokens = True
    with torch.no_grad():
        _, ref = micro.visual(pixels)
        ours = micro(pixels).patch_tokens
    micro.visual.output_tokens = False
    torch.testing.assert_close(ours, ref)


def test_open_clip_attention_matches_multihead_attention(micro):
    """Recomputed attention equals nn.MultiheadAttention's own weights for the chosen block."""
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = micro(pixels, output_attentions=True)
        x = micro.visual._embeds(pixels)
        block = micro.visual.transformer.resblocks[0]
        x = block(x)
        last = micro.visual.transformer.resblocks[1]
        h = last.ln_1(x)
        _, ref = last.attn(h, h, h, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out.attentions, ref, atol=1e-5, rtol=1e-4)


def test_register_custom_open_clip_config():
    register_open_clip_config("test-vit-rect", {"vision_cfg": {"image_size": 48, "patch_size": 16, "width": 24,
                                                               "layers": 1, "head_width": 12}})
    enc = OpenCLIPEncoder("test-vit-rect", layer=-1)
    assert enc.num_patches == 9 and enc.hidden_size == 24
    assert enc.encode(np.zeros((10, 20), np.uint8)).patch_tokens.shape == (1, 9, 24)


def test_preprocessing_accepts_every_image_form(micro, tmp_path):
    from PIL import Image
    from skimage import data

    rgb = data.astronaut()
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    inputs = [Image.fromarray(rgb), rgb, torch.from_numpy(rgb).permute(2, 0, 1), str(path), path,
              data.camera(), rgba]
    pixels = micro.preprocess(inputs)
    assert pixels.shape == (7, 3, 32, 32)
    for i in (1, 2, 3, 4):  # the same picture in any form gives the same pixels
        torch.testing.assert_close(pixels[i], pixels[0])
    from mmcompress.image_io import CLIP_MEAN, CLIP_STD

    raw = pixels * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(raw[5][0], raw[5][1], atol=1e-5, rtol=0)  # grayscale -> 3 equal channels
    assert raw[6].min() > 0.3  # RGBA at half alpha is composited on white, not on black


def test_bad_images_raise_clear_errors(micro, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        micro.encode(str(bad))
    with pytest.raises(ImageError, match="not found"):
        micro.encode(str(tmp_path / "missing.png"))
    with pytest.raises(ImageError, match="shape"):
        micro.encode(np.zeros((4, 4, 7)))
    with pytest.raises(ConfigError, match=r"\[B, 3, H, W\]"):
        micro(torch.zeros(3, 32, 32))


def test_unknown_open_clip_model():
    with pytest.raises(ModelNotFoundError, match="no model"):
        create_encoder("open_clip:ViT-Nope-99")


@pytest.mark.parametrize("make,has_cls", [(make_clip_vision, True), (make_siglip_vision, False)])
def test_hf_towers(make, has_cls):
    tower = make()
    enc = HFVisionEncoder(tower, layer=-2, select="default" if has_cls else "full")
    out = enc.encode([np.zeros((32, 32, 3), np.uint8), np.full((40, 30), 200, np.uint8)], output_attentions=True)
    assert out.patch_tokens.shape == (2, 16, 32)
    assert (out.cls_token is not None) == has_cls
    assert out.attentions.shape == (2, 4, 17 if has_cls else 16, 17 if has_cls else 16)
    # the features are LLaVA's: hidden_states[-2] without CLS
    with torch.no_grad():
        hs = tower(pixel_values=enc.preprocess(np.zeros((32, 32, 3), np.uint8)), output_hidden_states=True).hidden_states
    torch.testing.assert_close(out.patch_tokens[0], hs[-2][0, 1:] if has_cls else hs[-2][0])


def test_hf_attention_matches_eager():
    tower = make_clip_vision()
    tower.set_attn_implementation("eager")
    enc = HFVisionEncoder(tower, layer=-1)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = tower(pixel_values=pixels, output_attentions=True).attentions[-1]
        ours = enc(pixels, output_attentions=True).attentions
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_hf_from_pretrained_folder(tmp_path):
    make_siglip_vision().save_pretrained(tmp_path)
    enc = create_encoder(f"hf:{tmp_path}")
    assert enc.select_strategy == "full" and enc.num_patches == 16
    with pytest.raises(ModelNotFoundError):
        create_encoder(f"hf_clip:{tmp_path / 'nothing'}")
