#!/usr/bin/env python3
"""Golden outputs of the official 500xCompressor code on a tiny random Llama in the layout its training code saves.

Official code: ZongqianLi/500xCompressor at commit c85c1d779a55532d625d1dcbf2dc3b640c1919bb (env/pip_requirements.txt:
transformers 4.42.3, peft 0.11.1; run here with exactly those). What it runs: ``demo/L3LoraL3.py`` (``L3LoraL3``:
``load_lora_parameters``, ``compress``, ``predict``), read from the checkout with two literals replaced so that it runs
on a tiny model on a CPU: the hidden size ``4096`` of Llama-3-8B in ``memory_embeddings``' shape becomes the tiny
model's, and ``device='cuda:0'`` of ``predict``'s stop test becomes ``'cpu'``. ``from_pretrained`` gets float32 instead
of bf16. The encoder input is built as ``demo/500xCompressor_demo.py:66-77`` builds it (EOS padding to
``context_len``); the QA prompt is ``f"Question: {question} Answer: "`` (line 86), regeneration starts from BOS.

The tiny release: a 2-layer Llama (hidden 32, GQA 4/2 heads, rope_theta 500000, untied, as Llama-3-8B) with a tiny
byte-level BPE tokenizer, saved with ``save_pretrained``; ``L3LoraL3`` on it with ``LoraConfig(r=8, lora_alpha=32,
lora_dropout=0.05)`` (r=64 in the release) and ``num_mem=2``, LoRA and memory embeddings randomised (bf16 values, as
bf16 training leaves them), then written twice: ``checkpoint-1/model.safetensors`` = ``L3LoraL3.state_dict()`` as the
``Trainer`` saves a non-``PreTrainedModel`` (train_500xCompressor.py:176-184), and ``lora.pt`` = the LoRA entries
and ``memory_embeddings`` that ``load_lora_parameters`` reads with ``torch.load``. The golden outputs come from a
fresh ``L3LoraL3`` that loads ``lora.pt`` as the demo does.

    python tests/published_reference/xcompressor500.py --repo /path/to/500xCompressor
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS, FIXTURES, as_list, enter_reference, write_json  # noqa: E402

OUT = FIXTURES / "xcompressor500"
TEXT = "Paris is the capital and most populous city of France. The river flows to the sea."
QUESTION = "What is the capital of France?"
NUM_MEM, CONTEXT_LEN, MAX_LENGTH, RANK = 2, 48, 40, 8
GENERATE_TOKENS = 6


def byte_bpe_tokenizer():
    """A tiny byte-level BPE with Llama-3's special tokens (BOS/EOS names), as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def build_base(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=500000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def official_module(repo: Path, hidden: int):
    """demo/L3LoraL3.py with the two literals replaced (see the docstring); from_pretrained in float32."""
    import torch
    import transformers

    source = (repo / "demo" / "L3LoraL3.py").read_text()
    for old, new in (("4096", str(hidden)), ("device='cuda:0'", "device='cpu'")):
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    module = types.ModuleType("L3LoraL3")
    exec(compile(source, str(repo / "demo" / "L3LoraL3.py"), "exec"), module.__dict__)
    load = transformers.AutoModelForCausalLM.from_pretrained.__func__
    module.AutoModelForCausalLM.from_pretrained = classmethod(
        lambda cls, name, **kw: load(cls, name, **{**kw, "torch_dtype": torch.float32}))
    return module


def main() -> None:
    repo, _ = enter_reference(__file__, __doc__, "a checkout of ZongqianLi/500xCompressor at the "
                              "pinned commit", "published-500x",
                              ["transformers==4.42.3", "peft==0.11.1", "accelerate==0.31.0"], OUT)

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    base = OUT / "llama3-tiny"
    build_base(base)
    official = official_module(repo, hidden=32)
    lora_config = LoraConfig(r=RANK, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    lora_file = OUT / "lora.pt"
    torch.save({}, lora_file)  # the constructor loads lora_path; the first instance starts from nothing
    torch.manual_seed(1)

    def build():
        return official.L3LoraL3(llama_path=str(base), cache_dir=None, use_auth_token=None, max_length=MAX_LENGTH,
                                 lora_path=str(lora_file), lora_config=lora_config, num_mem=NUM_MEM,
                                 device=torch.device("cpu"))

    model = build()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or name == "memory_embeddings":
                p.copy_((torch.randn_like(p.float()) * (0.3 if "lora_" in name else 1.0)).to(torch.bfloat16))
    state = {k: v.to(torch.bfloat16).contiguous() if ("lora_" in k or k == "memory_embeddings") else v.contiguous()
             for k, v in model.state_dict().items()}
    (OUT / "checkpoint-1").mkdir(parents=True, exist_ok=True)
    save_file(state, str(OUT / "checkpoint-1" / "model.safetensors"), metadata={"format": "pt"})
    torch.save({k: v for k, v in state.items() if "lora" in k or k == "memory_embeddings"}, lora_file)

    model = build().eval()  # as the demo loads a release: lora_path read by load_lora_parameters
    tok = model.tokenizer
    with torch.no_grad():
        back_tokens = torch.full((CONTEXT_LEN,), tok.eos_token_id, dtype=torch.long)
        text_tokens = tok(TEXT, truncation=True, max_length=MAX_LENGTH, return_tensors="pt",
                          add_special_tokens=False).input_ids[0]
        back_tokens[: text_tokens.shape[0]] = text_tokens
        kv = model.compress(text=TEXT, text_tokens=back_tokens.unsqueeze(0), output_path=None)
        golden = {"official": "ZongqianLi/500xCompressor@c85c1d779a55532d625d1dcbf2dc3b640c1919bb demo/L3LoraL3.py",
                  "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
                  "num_mem": NUM_MEM, "context_len": CONTEXT_LEN, "max_length": MAX_LENGTH, "lora_r": RANK,
                  "text": TEXT, "question": QUESTION, "text_ids": text_tokens.tolist(),
                  "keys": [as_list(k[0]) for k, _ in kv], "values": [as_list(v[0]) for _, v in kv]}
        for task, prompt in (("ae", "bos"), ("qa", f"Question: {QUESTION} Answer: ")):
            ids = [[tok.bos_token_id]] if prompt == "bos" else tok.encode(prompt, return_tensors="pt",
                                                                          add_special_tokens=False)
            embeds = model.llama.get_input_embeddings()(torch.tensor(ids))
            with model.llama.disable_adapter():  # predict()'s first step (demo/L3LoraL3.py:149-153)
                logits = model.llama(inputs_embeds=embeds, past_key_values=kv).logits[0, -1]
            text = model.predict(past_key_values=kv, max_new_tokens=GENERATE_TOKENS, prompt=prompt)
            golden[f"{task}_logits"], golden[f"{task}_text"] = as_list(logits), text
    write_json(OUT / "golden.json", golden)


if __name__ == "__main__":
    main()
