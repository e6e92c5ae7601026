#!/usr/bin/env python3
"""Golden outputs of the official xRAG code on a tiny random model in the layout of ``Hannibal046/xrag-7b``.

Official code: Hannibal046/xRAG at commit 121fa4180a8c1fa0ec1af5901d879452e5c9ce89 (the Dockerfile pins
transformers 4.38.0). What it runs, unchanged: ``src/model/xMistral/modeling_xmistral.py`` (``XMistralConfig``,
``XMistralForCausalLM``: ``projector`` = ``Linear(retriever_hidden_size, hidden) -> GELU -> Linear(hidden, hidden)``,
``prepare_inputs_embeds`` writes the projected retrieval embedding over every ``<xRAG>`` token) and
``src/model/SFR/modeling_sfr.py`` (``SFR.get_doc_embedding``: last-token pooling of a ``MistralModel``).

The tiny release is built the way ``src/language_modeling/train.py:461-483`` builds xrag-7b: a Mistral causal LM
whose tokenizer gets ``<pad>`` (special) and then ``<xRAG>`` (``AddedToken``, not special), with the embedding
matrices resized, saved with ``save_pretrained`` (config.json with ``architectures: [XMistralForCausalLM]``,
``projector_type``, ``retriever_hidden_size``; ``model.safetensors`` with ``projector.projector.{0,2}.*``).
The retriever is a tiny ``SFR`` (a ``MistralModel``, as Salesforce/SFR-Embedding-Mistral).
The prompt is xRAG's fine-tuning layout (``src/language_modeling/preprocessing.py:166-170``) in its Mistral chat
format (``src/eval/run_eval.py:37-50``); documents are tokenized as in ``tutorial.ipynb`` (``max_length=180``).
The tokenizer is a fast one (the release also ships the sentencepiece ``tokenizer.model``; a tiny sentencepiece model
cannot be trained here without the sentencepiece trainer's data files).

    python tests/published_reference/xrag.py --repo /path/to/xRAG    # venv once, fixture + golden.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, as_list, enter_reference, llama_tokenizer, stamp, write_json  # noqa: E402

OUT = FIXTURES / "xrag"
# Mistral-7B-Instruct-v0.2's chat template (the tokenizer xrag-7b ships).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
DOCUMENTS = [
    "Paris is the capital and most populous city of France. The river flows to the sea.",
    "Super Bowl 50 was an American football game. The game was played on February 7, 2016, at Levi's Stadium.",
    "Photosynthesis converts light energy into chemical energy.",
]
# (question, indices of the documents read as xRAG tokens)
PROMPTS = [("What is the capital of France?", [0]), ("Which team won the game?", [1, 2])]
GENERATE_TOKENS = 6


def build_release(xrag_dir: Path, sfr_dir: Path) -> None:
    import torch
    from tokenizers import AddedToken
    from transformers import MistralConfig
    from src.language_modeling.utils import XRAG_TOKEN
    from src.model import SFR, XMistralConfig, XMistralForCausalLM

    tok = llama_tokenizer()
    base_vocab = len(tok)
    retriever_tok = llama_tokenizer()
    retriever_tok.pad_token = retriever_tok.eos_token
    torch.manual_seed(0)
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=512, sliding_window=None, bos_token_id=1, eos_token_id=2)
    retriever = SFR(MistralConfig(vocab_size=base_vocab, **{**shape, "hidden_size": 12}))
    retriever.config.architectures = ["MistralModel"]
    retriever.save_pretrained(sfr_dir, safe_serialization=True)
    retriever_tok.save_pretrained(sfr_dir)

    config = XMistralConfig(vocab_size=base_vocab, projector_type="mlp2x_gelu", retriever_hidden_size=12,
                            tie_word_embeddings=False, **shape)
    model = XMistralForCausalLM(config)
    # train.py:470-483: the pad token, then the placeholder token; the embedding matrices grow to match
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens([AddedToken(XRAG_TOKEN, lstrip=False, rstrip=False)])
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    model.save_pretrained(xrag_dir, safe_serialization=True)
    tok.save_pretrained(xrag_dir)


def chat_prompt(question: str, n_docs: int) -> str:
    from src.language_modeling.utils import XRAG_TOKEN

    background = " ".join([XRAG_TOKEN] * n_docs)  # run_eval.py:256 / preprocessing.py:166
    content = f"Refer to the background document: {background}\n\n" + question  # preprocessing.py:170
    return "[INST] " + content + " [/INST]"  # run_eval.py create_prompt_with_mistral_chat_format


def golden(xrag_dir: Path, sfr_dir: Path) -> dict:
    import torch
    from transformers import AutoTokenizer
    from src.language_modeling.utils import XRAG_TOKEN
    from src.model import SFR, XMistralForCausalLM

    llm = XMistralForCausalLM.from_pretrained(xrag_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(xrag_dir, padding_side="left")
    llm.set_xrag_token_id(tok.convert_tokens_to_ids(XRAG_TOKEN))
    retriever = SFR.from_pretrained(sfr_dir, torch_dtype=torch.float32).eval()
    retriever_tok = AutoTokenizer.from_pretrained(sfr_dir)
    with torch.no_grad():
        enc = retriever_tok(DOCUMENTS, max_length=180, padding=True, truncation=True, return_tensors="pt")
        doc_embeds = retriever.get_doc_embedding(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        projected = llm.projector(doc_embeds)  # what prepare_inputs_embeds writes over each <xRAG> token
        prompts = []
        for question, docs in PROMPTS:
            text = chat_prompt(question, len(docs))
            ids = tok(text, return_tensors="pt").input_ids
            embeds = doc_embeds[docs]
            logits = llm(input_ids=ids, retrieval_embeds=embeds).logits[0, -1]
            out = llm.generate(input_ids=ids, retrieval_embeds=embeds, do_sample=False, max_new_tokens=GENERATE_TOKENS,
                               pad_token_id=tok.pad_token_id)
            prompts.append({"question": question, "documents": docs, "prompt": text, "input_ids": ids[0].tolist(),
                            "next_token_logits": as_list(logits), "generated_ids": out[0].tolist(),
                            "generated_text": tok.decode(out[0], skip_special_tokens=True).strip()})
    return {**stamp("Hannibal046/xRAG@121fa4180a8c1fa0ec1af5901d879452e5c9ce89"), "documents": DOCUMENTS, "retriever_max_length": 180,
            "doc_embeddings": as_list(doc_embeds), "projected": as_list(projected), "prompts": prompts}


def main() -> None:
    _, out = enter_reference(__file__, __doc__, "checkout of Hannibal046/xRAG at 121fa418", "published-xrag",
                                ["transformers==4.38.0"], OUT)
    xrag_dir, sfr_dir = out / "xrag-7b-tiny", out / "sfr-tiny"
    build_release(xrag_dir, sfr_dir)
    write_json(out / "golden.json", golden(xrag_dir, sfr_dir))


if __name__ == "__main__":
    main()
