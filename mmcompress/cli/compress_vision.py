"""``mmcompress compress`` for vision methods (reached when ``--method`` names a vision reduction)::

    mmcompress compress --method visionzip --tokens 64 --image cat.png "USER: <image>\\nWhat is this? ASSISTANT:" \\
        --model llava-hf/llava-1.5-7b-hf

With ``--model`` (a VLM folder or HF id of a supported family: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL,
Qwen2.5-VL, Idefics3, SmolVLM; the config picks it) the VLM answers the prompt with K tokens per image, and the
visual tokens before and after and the prefill time are reported (``--json``: all of it as one record); without it
the images are only encoded and reduced (the method's ``encoder``). ``--device`` places the VLM (or, without
``--model``, the method's encoder); ``--model-kwargs`` go to the VLM's ``from_pretrained``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidPromptError


def is_vision_method(method: str) -> bool:
    """True when ``method`` (a name, shipped config or YAML path) is a compressor of family ``vision``."""
    from ..factory import find_recipe, list_configs, list_trained, load_config_file
    from ..registry import COMPRESSORS

    key = str(method).strip().lower().replace("-", "_")
    if key in COMPRESSORS:
        return getattr(COMPRESSORS.get(key), "family", "") == "vision"
    if method in list_trained():  # shipped trained compressors are text (soft) compressors
        return False
    path = Path(method)
    configs = list_configs()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        name = load_config_file(path)[0]
    elif method in configs and find_recipe(method) != configs[method]:  # a training recipe is not a compressor
        name = load_config_file(configs[method])[0]
    else:
        return False
    return name.lower().replace("-", "_") in COMPRESSORS and getattr(COMPRESSORS.get(name), "family", "") == "vision"


def run_vision(args: Any, text: str, overrides: dict[str, Any]) -> int:
    from ..factory import create_compressor
    from ..vision.runners import create_vlm

    if not args.image:
        raise InvalidPromptError(f"--method {args.method} compresses images: pass at least one --image FILE")
    if args.rate is not None:
        overrides.setdefault("tokens", None)
        overrides["rate"] = args.rate
    if args.tokens is not None:
        overrides["tokens"] = args.tokens
    if args.target_tokens is not None:
        raise ConfigError("for images use --tokens (visual tokens kept per image) or --rate, not --target-tokens")
    overlay = getattr(args, "image_overlay", None)
    if overlay and args.model:
        raise ConfigError("--image-overlay shows the reduction of the method's own encoder; drop --model to get it")
    device, model_kwargs = getattr(args, "device", None), getattr(args, "model_kwargs", None)
    if model_kwargs is not None and not args.model:
        raise ConfigError("--model-kwargs go to the VLM's from_pretrained: give the VLM with --model")
    if device is not None:
        overrides.setdefault("device", device)  # the method's own encoder, used without --model
    compressor = create_compressor(args.method, **overrides)
    if args.model:
        runner = create_vlm(args.model, template=args.template, device=device or "cpu", model_kwargs=model_kwargs)
        result = runner.generate(text, images=args.image, compressor=compressor, max_new_tokens=args.max_new_tokens)
        record = {"family": runner.family, **result.to_dict()}
        line = (f"--- {result.method}: visual tokens {result.visual_tokens_full} -> {result.visual_tokens_after_prune} "
                f"({result.tokens_saved} saved) for {len(args.image)} image(s); prefill "
                f"{result.timings['prefill']:.3f} s, total {result.timings['total']:.2f} s ({runner.family})")
        body = result.text
    else:
        result = compressor.compress(text, images=args.image)
        record = result.to_dict()
        line = (f"--- {result.method}: visual tokens {result.origin_tokens} -> {result.compressed_tokens} "
                f"({result.saved_tokens} saved) for {result.num_images} image(s); no --model given, so only encoded")
        body = f"{result.num_images} image(s) x {result.tokens.shape[1]} tokens of width {result.tokens.shape[2]}"
        if overlay:
            from ..vision.overlay import overlay_strip

            try:
                overlay_strip(args.image, result).save(overlay)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot write the overlay {overlay}: {e}") from None
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.json:
            json.dump(record, out, ensure_ascii=False, indent=2)
            out.write("\n")
        else:
            out.write(body.rstrip("\n") + "\n")
            if not getattr(args, "quiet", False):  # statistics on stderr, never in the output
                print(line, file=sys.stderr)
    finally:
        if args.output:
            out.close()
    return 0
