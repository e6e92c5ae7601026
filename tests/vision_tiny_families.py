"""Tiny random VLMs of each HF family (LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL), each with its own
processor, built offline for the runner tests. Every builder returns ``(model, processor)``."""
from __future__ import annotations

GRID = [[32, 32], [32, 64], [64, 32], [64, 64]]  # any-resolution pinpoints at 32 px tiles


def _tokenizer(*extra: str):
    from tiny_models import make_bpe_tokenizer

    tokenizer = make_bpe_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    return tokenizer


def _llama_text(tokenizer, hidden: int = 32, layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def make_llava_next(seed: int = 0):
    """LLaVA-NeXT: CLIP tower (32 px, patch 8 -> 16 patches + CLS per tile), any-resolution tiles up to 64x64."""
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tokenizer = _tokenizer("<image>")
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, projection_dim=32)
    config = LlavaNextConfig(vision_config=vision, text_config=_llama_text(tokenizer),
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=GRID,
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                image_grid_pinpoints=GRID),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


def make_llava_onevision(seed: int = 0):
    """LLaVA-OneVision: SigLIP tower (32 px, patch 8 -> 16 patches per tile, no CLS), any-resolution tiles."""
    import torch
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, SiglipVisionConfig)

    tokenizer = _tokenizer("<image>", "<video>")
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=3, num_attention_heads=4)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=_llama_text(tokenizer),
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                  image_grid_pinpoints=GRID, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full")
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=GRID),
        tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}),
        num_image_tokens=16, vision_feature_select_strategy="full")
    return model, processor


def make_qwen2_vl(seed: int = 0, version: str = "2"):
    """Qwen2-VL (``version="2.5"``: Qwen2.5-VL): patch 4, 2x2 merger; a 32x32 image is 64 patches -> 16 tokens."""
    import torch
    from transformers import AutoImageProcessor

    tokenizer = _tokenizer("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    ids = {name: tokenizer.convert_tokens_to_ids(name)
           for name in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    common = dict(vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"])
    if version == "2":
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model, \
            Qwen2VLProcessor as Processor
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, mlp_ratio=2)
    else:
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model, \
            Qwen2_5_VLProcessor as Processor
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=32,
                      window_size=16, fullatt_block_indexes=[1])
    config = Config(text_config=text, vision_config=vision, **common)
    model = Model(config).eval()
    image_processor = AutoImageProcessor.from_pretrained  # noqa: F841  (the class below is the one Qwen ships)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    improc = Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2,
                                   min_pixels=16 * 16, max_pixels=64 * 64)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    processor = Processor(image_processor=improc, tokenizer=tokenizer,
                          video_processor=Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2))
    return model, processor


def make_idefics3(seed: int = 0, smolvlm: bool = False):
    """Idefics3 (``smolvlm=True``: SmolVLM): SigLIP-style tower (32 px tiles, patch 4 -> 64 patches), pixel shuffle
    x2 -> 16 tokens per tile; images up to 64 px are split into 32 px tiles plus a global view."""
    import torch

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
        f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _tokenizer(*specials)
    torch.manual_seed(seed)
    if smolvlm:
        from transformers import SmolVLMConfig as Config, SmolVLMForConditionalGeneration as Model, \
            SmolVLMImageProcessor as ImageProcessor, SmolVLMProcessor as Processor
    else:
        from transformers import Idefics3Config as Config, Idefics3ForConditionalGeneration as Model, \
            Idefics3ImageProcessor as ImageProcessor, Idefics3Processor as Processor
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4)
    config = Config(vision_config=vision, text_config=_llama_text(tokenizer).to_dict(), scale_factor=2,
                    image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Model(config).eval()
    improc = ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)
    extra = {}
    if smolvlm:
        from transformers import SmolVLMVideoProcessor

        extra["video_processor"] = SmolVLMVideoProcessor(size={"longest_edge": 32},
                                                         max_image_size={"longest_edge": 32})
    processor = Processor(image_processor=improc, tokenizer=tokenizer, image_seq_len=16, **extra)
    return model, processor
