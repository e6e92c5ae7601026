"""Tiny, randomly initialised vision towers and LLaVA models built offline in the test session."""
from __future__ import annotations

from pathlib import Path


def make_clip_vision(image_size: int = 32, patch: int = 8, hidden: int = 32, layers: int = 2, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(image_size=image_size, patch_size=patch, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, projection_dim=hidden)
    return CLIPVisionModel(cfg).eval()


def make_siglip_vision(image_size: int = 32, patch: int = 8, hidden: int = 32, layers: int = 2, seed: int = 0):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(image_size=image_size, patch_size=patch, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4)
    return SiglipVisionModel(cfg).eval()


def make_llava(folder: Path | None = None, image_size: int = 32, patch: int = 4, text_hidden: int = 32,
               text_layers: int = 4, seed: int = 0):
    """A tiny LlavaForConditionalGeneration (CLIP tower, Llama text model) with a BPE tokenizer that has <image>,
    saved with a CLIPImageProcessor when ``folder`` is given. Returns (model, tokenizer)."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    from tiny_models import make_bpe_tokenizer

    tokenizer = make_bpe_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                       num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=(image_size // patch) ** 2)
    model = LlavaForConditionalGeneration(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                           ).save_pretrained(folder)
    return model, tokenizer
