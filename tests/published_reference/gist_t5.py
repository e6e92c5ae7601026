#!/usr/bin/env python3
"""Golden outputs of the official GIST code on a tiny random FLAN-T5 gist model (``jayelm/flan-t5-xxl-gist-1``'s layout).

Official code: jayelm/gisting at commit 3be0d062b6bdfd3caf51843bbc60261a0855f876, run with transformers 4.28.0 (the
README pins transformers@fb366b9a, between 4.27 and 4.28; the T5 modules gist_t5.py subclasses are the same in
4.28.0, so nothing is patched). What it runs, unchanged: ``src/gist_t5.py`` (``GistT5ForConditionalGeneration``:
``get_gist_activations``, the encoder reading the input after the cached gists, ``GistGenerationMixin``'s
``generate``), ``src/gist_caching.py`` (``GistActivations``) and ``src/data/gist.py`` (``make_gist_mask``,
``make_mask_pre_first_gist``: the training-time masks of src/data/alpaca/collator.py:108-121).

The tiny release follows src/train.py:175-199 for T5: a FLAN-T5 layout (T5 v1.1: gated-gelu, untied LM head,
relative attention buckets) with a T5-style unigram tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended),
``<GIST>`` added as the additional special token, ``shared`` / ``lm_head`` resized by one row (the new one set to
the vocabulary mean), then "training" = a small random change of every weight; written with
``GistT5ForConditionalGeneration.save_pretrained`` (``pytorch_model.bin``, float32) as the release is.
Golden outputs follow src/compress.py:121-201 on CPU in float32: the gists' encoder keys/values at every layer
and their last hidden states for ``"Instruction: {instruction}\\n<GIST>..."``, then the decoder's first-step logits
and a greedy continuation with the input ``"\\nInput: {input}"`` read by the encoder after the cached gists, plus the
same logits from one full forward pass under the training masks (no caching).

    python tests/published_reference/gist_t5.py --repo /path/to/gisting
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ALPHABET, CORPUS, FIXTURES, as_list, enter_reference, stamp, write_json  # noqa: E402
from gist import CASES, ENVIRONMENT, GENERATE_TOKENS, SOURCE, gist_kv  # noqa: E402  (the LLaMA reference's prompts, on the other architecture)

OUT = FIXTURES / "gist_t5"


def t5_tokenizer(vocab_size: int = 300):
    """A tiny unigram tokenizer laid out as FLAN-T5's (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; words split at whitespace,
    ``▁`` before each; ``</s>`` appended), as a ``T5TokenizerFast``; current transformers rebuild exactly this
    pipeline around the vocabulary when they load it (the release's is FLAN-T5's sentencepiece model plus ``<GIST>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", add_prefix_space=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", add_prefix_space=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False, initial_alphabet=list(ALPHABET))
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def build_release(folder: Path) -> None:
    import torch
    from transformers import T5Config
    from src.gist_t5 import GistT5ForConditionalGeneration

    tok = t5_tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = GistT5ForConditionalGeneration(config)  # stands for FLAN-T5 (pretrained)
    tok.add_special_tokens({"additional_special_tokens": ["<GIST>"]})  # train.py:188-190
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        model.shared.weight[-1] = model.shared.weight[:-1].mean(0)  # train.py:194-195
        for param in model.parameters():  # stands for fine-tuning
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())  # no local paths in the committed fixture
    config["_name_or_path"] = "flan-t5-tiny"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def golden(folder: Path) -> list[dict]:
    import torch
    from transformers import AutoTokenizer
    from src.data.gist import make_gist_mask, make_mask_pre_first_gist
    from src.gist_t5 import GistT5ForConditionalGeneration

    model = GistT5ForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.shared.weight.shape[0] == len(tok)  # compress.py:123-124, with the tiny vocabulary
    gist_token = tok.additional_special_tokens_ids[-1]
    start = torch.tensor([[model.config.decoder_start_token_id]])
    cases = []
    for instruction, inp, k in CASES:
        gist_str = "<GIST>" * k
        instruction_ids = tok.encode(f"Instruction: {instruction}\n{gist_str}")[:-1]  # compress.py:129-134
        ids = torch.tensor(instruction_ids)[None]
        with torch.no_grad():
            activations = model.get_gist_activations(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                     gist_token=gist_token, num_gist_tokens=k)
            prepped = f"<GIST>\nInput: {inp}" if inp else "<GIST>"  # compress.py:156-167 (T5: no suffix)
            full = f"Instruction: {instruction}\n{gist_str}\nInput: {inp}" if inp else f"Instruction: {instruction}\n{gist_str}"
            input_ids = tok.encode(prepped)
            input_ids = input_ids[input_ids.index(gist_token) + 1:]
            assert tok.encode(full) == instruction_ids + input_ids  # compress.py's own sanity check
            input_t = torch.tensor(input_ids)[None]
            mask = torch.ones(1, len(input_ids) + k, dtype=torch.long)
            logits = model(input_ids=input_t, attention_mask=mask, gist_activations=activations,
                           decoder_input_ids=start).logits[0, -1]
            generated = model.generate(input_ids=input_t, attention_mask=mask, gist_activations=activations,
                                       max_new_tokens=GENERATE_TOKENS, do_sample=False)
            full_ids = torch.tensor(tok.encode(full))[None]
            full_logits = model(input_ids=full_ids, decoder_input_ids=start,
                                attention_mask=make_gist_mask(full_ids, gist_token).squeeze(1),
                                cross_attention_mask=make_mask_pre_first_gist(full_ids, gist_token)).logits[0, -1]
        new = [t for t in generated[0].tolist()[1:]]  # after the decoder start token
        cases.append({"instruction": instruction, "input": inp, "num_gist_tokens": k,
                      "instruction_ids": instruction_ids, "input_ids": input_ids,
                      **gist_kv(activations), "gist_hidden": as_list(activations.last_hidden_state[0]),
                      "next_token_logits": as_list(logits), "full_masked_logits": as_list(full_logits),
                      "generated_ids": new, "generated_text": tok.decode(new, skip_special_tokens=True)})
    return cases


def main() -> None:
    _, out = enter_reference(__file__, __doc__, *ENVIRONMENT, OUT)
    folder = out / "flan-t5-gist-tiny"
    build_release(folder)
    write_json(out / "golden.json", {**stamp(SOURCE),
                                     "release": folder.name, "cases": golden(folder)})


if __name__ == "__main__":
    main()
