#!/usr/bin/env python3
"""Golden outputs of the official AutoCompressor code on tiny random Llama and OPT models in the release layout.

Official code: princeton-nlp/AutoCompressors at commit 80352a4233c4a70504c75bf95c5f3e6d2533a863 (README pins
transformers 4.34.0). What it runs: ``auto_compressor.py`` unchanged (``AutoCompressorMixin.forward`` with
``segment_lengths`` / ``softprompt`` / ``output_softprompt``, ``OPTAutoCompressorModel`` with its
``OPTLearnedPositionalEmbeddingWithPadding``, ``LlamaAutoCompressorModel``). One substitution: the Llama class is built
on transformers' own ``LlamaForCausalLM`` instead of ``modeling_flash_llama.LlamaForCausalLM`` (flash-attn kernels
need CUDA); for an unpadded batch both run causal attention with positions ``0..n-1`` over
``[softprompt][segment][summary tokens]`` (modeling_flash_llama.py:300-302 with ``position_ids=None``).

The tiny releases are saved as train.py saves them (train.py:158-160: ``summary_length``, ``accumulate_summary``,
``segment_gradient_checkpointing`` in config.json; ``embed_summary.weight`` next to the LM's weights, as
``pytorch_model.bin``), with ``embed_summary`` moved away from its EOS initialisation as training would.
Golden outputs follow the README's usage: ``model(context, segment_lengths=..., output_softprompt=True).softprompt``
(context tokenized without special tokens), then ``model(prompt, softprompt=...)`` next-token logits and a greedy
continuation computed by repeated forward passes.

    python tests/published_reference/autocompressor.py --repo /path/to/AutoCompressors
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, as_list, enter_reference, llama_tokenizer, stamp, write_json  # noqa: E402

OUT = FIXTURES / "autocompressor"
CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football League. "
           "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
           "California. Paris is the capital and most populous city of France.")
PROMPT = "The game was played at"
SEGMENT = 24  # tokens per segment: the context becomes 3-4 segments
SUMMARY_LENGTH = 4
GENERATE_TOKENS = 5


def official_classes(repo: Path):
    import transformers

    stub = types.ModuleType("modeling_flash_llama")  # see the module docstring
    stub.LlamaForCausalLM = transformers.LlamaForCausalLM
    sys.modules["modeling_flash_llama"] = stub
    sys.path.insert(0, str(repo))
    import auto_compressor

    return auto_compressor


def build_release(kind: str, folder: Path, ac) -> None:
    import torch
    from transformers import LlamaConfig, OPTConfig

    tok = llama_tokenizer()
    torch.manual_seed(0 if kind == "llama" else 1)
    if kind == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        cls = ac.LlamaAutoCompressorModel
    else:
        config = OPTConfig(vocab_size=len(tok), hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                           max_position_embeddings=128, word_embed_proj_dim=16, bos_token_id=1, eos_token_id=2,
                           pad_token_id=1, enable_bias=True, do_layer_norm_before=True)
        cls = ac.OPTAutoCompressorModel
    config.summary_length, config.accumulate_summary, config.segment_gradient_checkpointing = SUMMARY_LENGTH, True, False
    model = cls(config)
    with torch.no_grad():
        model.embed_summary.weight.add_(torch.randn_like(model.embed_summary.weight) * 0.05)
        if kind == "opt":  # a trained OPT's padding row is not zero; make the test see whether it is used
            model.model.decoder.embed_positions.weight[1].normal_(0, 0.05)
    model.save_pretrained(folder, safe_serialization=False)
    tok.save_pretrained(folder)


def golden(kind: str, folder: Path, ac) -> dict:
    import torch
    from transformers import AutoTokenizer

    cls = ac.LlamaAutoCompressorModel if kind == "llama" else ac.OPTAutoCompressorModel
    model = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    context = tok(CONTEXT, add_special_tokens=False, return_tensors="pt").input_ids
    prompt = tok(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    n = context.shape[1]
    segments = [SEGMENT] * (n // SEGMENT) + ([n % SEGMENT] if n % SEGMENT else [])
    with torch.no_grad():
        one = model(context[:, :SEGMENT], output_softprompt=True).softprompt
        softprompt = model(context, segment_lengths=segments, output_softprompt=True).softprompt
        logits = model(prompt, softprompt=softprompt).logits[0, -1]
        ids = prompt
        for _ in range(GENERATE_TOKENS):  # greedy, recomputing the whole prompt each step
            nxt = model(ids, softprompt=softprompt).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    generated = ids[0, prompt.shape[1]:]
    return {"context": CONTEXT, "prompt": PROMPT, "segment_lengths": segments, "context_ids": context[0].tolist(),
            "one_segment_softprompt": as_list(one[0]), "softprompt": as_list(softprompt[0]),
            "next_token_logits": as_list(logits), "generated_ids": generated.tolist(),
            "generated_text": tok.decode(generated, skip_special_tokens=True)}


def main() -> None:
    repo, out = enter_reference(__file__, __doc__, "checkout of princeton-nlp/AutoCompressors at 80352a42",
                                "published-autocompressor", ["transformers==4.34.0"], OUT)
    ac = official_classes(repo)
    result = {**stamp("princeton-nlp/AutoCompressors@80352a4233c4a70504c75bf95c5f3e6d2533a863"),
              "summary_length": SUMMARY_LENGTH}
    for kind in ("llama", "opt"):
        folder = out / f"{kind}-tiny"
        build_release(kind, folder, ac)
        result[kind] = golden(kind, folder, ac)
    write_json(out / "golden.json", result)


if __name__ == "__main__":
    main()
