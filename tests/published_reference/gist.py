#!/usr/bin/env python3
"""Golden outputs of the official GIST code on a tiny random LLaMA gist model, as full weights and as a weight diff.

Official code: jayelm/gisting at commit 3be0d062b6bdfd3caf51843bbc60261a0855f876 (the README pins transformers
commit fb366b9a, between 4.27 and 4.28; this runs transformers 4.28.0, whose Llama modules gist_llama.py subclasses
unchanged, except ``apply_rotary_pos_emb``: fb366b9a's takes ``offset=`` where 4.28.0's takes ``position_ids``, so the
fb366b9a function is restated below and patched into gist_llama). What it runs: ``src/gist_llama.py`` (``GistLlamaForCausalLM``, ``get_gist_activations``, gist caching with
``gist_offset``), ``src/data/gist.py`` (``make_gist_mask``) and ``src/weight_diff.py`` (``make_diff`` to write the
diff release, ``recover`` to check it). Two constants of weight_diff.py are patched for a tiny model: its vocabulary
size (``PRETRAINED_VOCAB_SIZE``, 32000 for LLaMA) and its ``LlamaTokenizer`` (the tiny tokenizer is a fast one).

The tiny release follows src/train.py:186-199 (``<GIST>`` added as an additional special token, embedding rows
resized and set to the vocabulary mean, then "training" = a small random change of every weight) and is written in
both released layouts: ``llama-gist-tiny`` (full weights, ``GistLlamaForCausalLM.save_pretrained``) and
``llama-gist-diff-tiny`` (``weight_diff.make_diff`` against ``llama-base-tiny``, as ``jayelm/llama-7b-gist-1``).
Golden outputs follow src/compress.py:121-201 on CPU: the gist KV of ``"Instruction: {instruction}\\n<GIST>..."``,
then the next-token logits and a greedy continuation of ``"\\nInput: {input}\\nOutput:"`` read against it, plus the
same logits from one full forward pass under ``make_gist_mask``.

    python tests/published_reference/gist.py --repo /path/to/gisting
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, as_list, enter_reference, llama_tokenizer, stamp, write_json  # noqa: E402

OUT = FIXTURES / "gist"
CASES = [  # (instruction, input, number of gist tokens)
    ("Answer the question using the documents.", "What is the capital of France?", 1),
    ("Which team won the game?", "", 2),
]
GENERATE_TOKENS = 5
SOURCE = "jayelm/gisting@3be0d062b6bdfd3caf51843bbc60261a0855f876"
ENVIRONMENT = ("checkout of jayelm/gisting at 3be0d062", "published-gist", ["transformers==4.28.0", "fire", "tqdm"])


def gist_kv(activations) -> dict:
    """The gists' cached keys and values per layer (batch row 0), as golden.json stores them."""
    return {"gist_keys": [as_list(key[0]) for key, _ in activations.past_key_values],
            "gist_values": [as_list(value[0]) for _, value in activations.past_key_values]}


def apply_rotary_pos_emb(q, k, cos, sin, offset: int = 0):
    """transformers@fb366b9a src/transformers/models/llama/modeling_llama.py: the rotary of gist_llama.py's era."""
    from transformers.models.llama.modeling_llama import rotate_half

    cos = cos[..., offset: q.shape[-2] + offset, :]
    sin = sin[..., offset: q.shape[-2] + offset, :]
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def official_modules():
    from src import gist_llama

    gist_llama.apply_rotary_pos_emb = apply_rotary_pos_emb


def build_release(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast
    from src import weight_diff
    from src.gist_llama import GistLlamaForCausalLM

    base_dir, tuned_dir, diff_dir = out / "llama-base-tiny", out / "llama-gist-tiny", out / "llama-gist-diff-tiny"
    tok = llama_tokenizer()
    torch.manual_seed(0)
    raw = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, max_position_embeddings=256, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0, tie_word_embeddings=False))
    raw.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    model = GistLlamaForCausalLM.from_pretrained(base_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<GIST>"]})  # train.py:188-199
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        model.model.embed_tokens.weight[-1] = model.model.embed_tokens.weight[:-1].mean(0)
        model.lm_head.weight[-1] = model.lm_head.weight[:-1].mean(0)
        for param in model.parameters():  # stands for fine-tuning
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(tuned_dir)
    tok.save_pretrained(tuned_dir)
    weight_diff.PRETRAINED_VOCAB_SIZE = len(tok) - 1
    weight_diff.LlamaTokenizer = LlamaTokenizerFast
    weight_diff.make_diff(path_raw=str(base_dir), path_tuned=str(tuned_dir), path_diff=str(diff_dir))
    for folder in (tuned_dir, diff_dir):  # save_pretrained records where the weights came from: no local paths
        config = json.loads((folder / "config.json").read_text())
        config["_name_or_path"] = base_dir.name
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    recovered, _ = weight_diff.recover(path_raw=str(base_dir), path_diff=str(diff_dir), test_inference=False,
                                       check_integrity_naively=False)
    tuned = GistLlamaForCausalLM.from_pretrained(tuned_dir).state_dict()
    worst = max(float((recovered.state_dict()[k] - v).abs().max()) for k, v in tuned.items())
    assert worst < 1e-6, f"weight_diff.recover does not give the tuned model back ({worst})"


def golden(folder: Path) -> list[dict]:
    import torch
    from transformers import LlamaTokenizerFast
    from src.data.gist import make_gist_mask
    from src.gist_llama import GistLlamaForCausalLM

    model = GistLlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tok = LlamaTokenizerFast.from_pretrained(folder)
    gist_token = tok.additional_special_tokens_ids[-1]
    cases = []
    for instruction, inp, k in CASES:
        gist_str = "<GIST>" * k
        instruction_ids = tok.encode(f"Instruction: {instruction}\n{gist_str}")
        ids = torch.tensor(instruction_ids)[None]
        with torch.no_grad():
            activations = model.get_gist_activations(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                     attention_mask_gist=torch.ones_like(ids)[None, None],
                                                     gist_token=gist_token, num_gist_tokens=k)
            suffix = "\nOutput:"
            prepped = f"<GIST>\nInput: {inp}{suffix}" if inp else f"<GIST>{suffix}"
            full = (f"Instruction: {instruction}\n{gist_str}\nInput: {inp}{suffix}" if inp
                    else f"Instruction: {instruction}\n{gist_str}{suffix}")
            input_ids = tok.encode(prepped)
            input_ids = input_ids[input_ids.index(gist_token) + 1:]
            assert tok.encode(full) == instruction_ids + input_ids  # compress.py's own sanity check
            input_t = torch.tensor(input_ids)[None]
            mask = torch.ones(1, len(input_ids) + k, dtype=torch.long)
            kwargs = dict(attention_mask=mask, attention_mask_gist=mask[None, None],
                          past_key_values=activations.past_key_values, gist_offset=activations.gist_indices)
            logits = model(input_ids=input_t, **kwargs).logits[0, -1]
            generated = model.generate(input_ids=input_t, max_new_tokens=GENERATE_TOKENS, do_sample=False, **kwargs)
            full_ids = torch.tensor(tok.encode(full))[None]
            full_logits = model(input_ids=full_ids, attention_mask_gist=make_gist_mask(full_ids, gist_token)).logits[0, -1]
        new = generated[0, len(input_ids):].tolist()
        cases.append({"instruction": instruction, "input": inp, "num_gist_tokens": k,
                      "instruction_ids": instruction_ids, "input_ids": input_ids,
                      "gist_offset": int(activations.gist_indices[0]), **gist_kv(activations),
                      "next_token_logits": as_list(logits), "full_masked_logits": as_list(full_logits),
                      "generated_ids": new, "generated_text": tok.decode(new, skip_special_tokens=True)})
    return cases


def main() -> None:
    _, out = enter_reference(__file__, __doc__, *ENVIRONMENT, OUT)
    official_modules()
    build_release(out)
    write_json(out / "golden.json", {**stamp(SOURCE),
                                     "cases": golden(out / "llama-gist-tiny")})


if __name__ == "__main__":
    main()
