#!/usr/bin/env python3
"""Golden outputs of the official ICAE v2 code on a tiny random Mistral in the layout of ``sggetao/icae``.

Official code: getao/icae at commit 469a46886a92dd5e76b2d12a8bac0fb7ed7d4cdd (README: transformers >= 4.36.2; run here
with transformers 4.36.2 and peft 0.7.1). What it runs, unchanged: ``code/icae_v2/modeling_icae_multi_span.py``
(``ICAE``: ``memory_token_embed``, ``_compress``, ``tokens_to_embeddings``). The decoder steps are the ones of
``pretrained_inference.py:43-66`` and ``fine_tuned_inference.py:49-76`` (scripts, not functions), restated with
the Mistral template ids taken from the tiny tokenizer (``<s>`` + "[INST]", "[/INST]") instead of the hard-coded
Mistral ids ``[1, 733, 16289, 28793]`` / ``[733, 28748, 16289, 28793]`` (the same pieces in the real vocabulary).

Adaptations to run on a CPU in float32, none of which changes what is computed: ``from_pretrained`` gets
``torch_dtype=float32`` and eager attention instead of bf16 + flash-attention 2, and the tokenizer is a fast one
(the release's is sentencepiece; ``use_fast=False`` is dropped).

The tiny release: a 2-layer Mistral (hidden 32, GQA 4/2 heads, rope_theta 1e6, no sliding window, as
Mistral-7B-Instruct-v0.2) saved with ``save_pretrained``; ``ICAE`` built on it as the inference scripts do (LoRA
``r=8`` instead of 512, ``lora_alpha=32``, ``fixed_mem_size=4``, ``mean_compression_rate=4``), its LoRA and memory
embeddings randomised, and the release file written as the release's: the LoRA + ``memory_token_embed`` entries
of ``ICAE.state_dict()``, bf16, ``mistral_7b_ft_icae.safetensors``. It is then read back the way the inference
scripts read it (a fresh ``ICAE`` + ``load_state_dict(load_file(...), strict=False)``) before any golden output.

    python tests/published_reference/icae.py --repo /path/to/icae    # venv once, fixture + golden.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, as_list, enter_reference, llama_tokenizer, write_json  # noqa: E402

OUT = FIXTURES / "icae"
TEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football League. "
        "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area.")
PROMPT = "Which team won the game?"
MEM, RATE, RANK = 4, 4, 8
GENERATE_TOKENS = 6
CHECKPOINT = "mistral_7b_ft_icae.safetensors"


def build_base(folder: Path) -> None:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tok = llama_tokenizer()
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           rope_theta=1e6, sliding_window=None, bos_token_id=1, eos_token_id=2,
                           tie_word_embeddings=False)
    MistralForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def official_icae(modeling, base: Path):
    import torch
    import transformers
    from peft import LoraConfig
    from transformers import HfArgumentParser

    # CPU float32: plain attention instead of flash-attention 2 and bf16; a fast tokenizer (see the docstring)
    load_model = transformers.AutoModelForCausalLM.from_pretrained.__func__
    load_tok = transformers.AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, **kw):
        kw.pop("use_flash_attention_2", None)
        kw.update(torch_dtype=torch.float32, attn_implementation="eager")
        return load_model(cls, name, **kw)

    modeling.AutoModelForCausalLM.from_pretrained = classmethod(from_pretrained)
    modeling.AutoTokenizer.from_pretrained = classmethod(lambda cls, name, **kw: load_tok(cls, name))
    parser = HfArgumentParser((modeling.ModelArguments, modeling.DataArguments, modeling.TrainingArguments))
    model_args, _, training_args = parser.parse_args_into_dataclasses(args=[
        "--model_name_or_path", str(base), "--lora_r", str(RANK), "--fixed_mem_size", str(MEM),
        "--mean_compression_rate", str(RATE), "--output_dir", str(OUT / CHECKPOINT), "--train", "False",
        "--model_max_length", "5120", "--use_cpu", "True"])
    lora_config = LoraConfig(r=RANK, lora_alpha=32, lora_dropout=model_args.lora_dropout, bias="none",
                             task_type="CAUSAL_LM")
    return modeling.ICAE(model_args, training_args, lora_config)


def greedy(model, embeds):
    """pretrained_inference.py:53-66: cached greedy decoding with the adapter off, logits cut to the base vocab."""
    import torch

    out_ids, past, inputs = [], None, embeds
    for _ in range(GENERATE_TOKENS):
        with model.icae.disable_adapter():
            out = model.icae(inputs_embeds=inputs, past_key_values=past, use_cache=True)
        logit = out.logits[:, -1, :model.vocab_size - 1]
        past = out.past_key_values
        next_id = torch.argmax(logit, dim=-1)
        if next_id.item() == 2:
            break
        inputs = model.icae.get_base_model().model.embed_tokens(next_id).unsqueeze(1)
        out_ids.append(next_id.item())
    return out_ids


def main() -> None:
    repo, _ = enter_reference(__file__, __doc__, "a checkout of getao/icae at the pinned commit",
                                "published-icae", ["transformers==4.36.2", "peft==0.7.1", "accelerate==0.25.0"], OUT)

    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(repo / "code" / "icae_v2"))
    import modeling_icae_multi_span as modeling

    base = OUT / "mistral-tiny"
    build_base(base)
    torch.manual_seed(1)
    model = official_icae(modeling, base)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "memory_token_embed" in name:
                p.copy_(torch.randn_like(p) * (0.3 if "lora_" in name else 1.0))
    release = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
               if "lora_" in k or "memory_token_embed" in k}
    save_file(release, str(OUT / CHECKPOINT))

    model = official_icae(modeling, base)  # as pretrained_inference.py:27-33 reads a release
    model.load_state_dict(load_file(str(OUT / CHECKPOINT)), strict=False)
    model.eval()
    tok = model.tokenizer
    with torch.no_grad():
        input_ids = torch.LongTensor([tok(TEXT, truncation=True, max_length=5120, padding=False,
                                          return_attention_mask=False)["input_ids"]])
        slots = model._compress(input_ids)
        # pretrained: [slots] [AE] (pretrained_inference.py:48-52)
        ae = model.tokens_to_embeddings(torch.LongTensor([[model.ae_token_id]]))
        ae_embeds = torch.cat((slots.unsqueeze(0).to(ae), ae), dim=1)
        with model.icae.disable_adapter():
            ae_logits = model.icae(inputs_embeds=ae_embeds).logits[0, -1, :model.vocab_size - 1]
        ae_tokens = greedy(model, ae_embeds)
        # fine-tuned: <s> [INST] [slots] [FT] prompt [/INST] (fine_tuned_inference.py:49-62)
        left = [tok.bos_token_id, *tok.encode("[INST]", add_special_tokens=False)]
        right = [model.ft_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"],
                 *tok.encode("[/INST]", add_special_tokens=False)]
        left_embs = model.tokens_to_embeddings(torch.LongTensor([left]))
        right_embs = model.tokens_to_embeddings(torch.LongTensor([right]))
        ft_embeds = torch.cat((left_embs, slots.unsqueeze(0).to(right_embs), right_embs), dim=1)
        with model.icae.disable_adapter():
            ft_logits = model.icae(inputs_embeds=ft_embeds).logits[0, -1, :model.vocab_size - 1]
        ft_tokens = greedy(model, ft_embeds)
    write_json(OUT / "golden.json", {
        "official": "getao/icae@469a46886a92dd5e76b2d12a8bac0fb7ed7d4cdd code/icae_v2",
        "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
        "checkpoint": CHECKPOINT, "base": base.name, "mem_size": MEM, "mean_compression_rate": RATE,
        "lora_r": RANK, "text": TEXT, "prompt": PROMPT, "input_ids": input_ids[0].tolist(),
        "num_segments": model.compute_num_segments(input_ids.shape[1]), "template_left": left,
        "template_right": right, "memory_slots": as_list(slots), "ae_logits": as_list(ae_logits),
        "ae_tokens": ae_tokens, "ft_logits": as_list(ft_logits), "ft_tokens": ft_tokens,
    })


if __name__ == "__main__":
    main()
