"""Tiny token classifiers for LLMLingua-2 tests, one per tokenizer family, built offline in well under a second:
BERT + WordPiece (``##`` continuations), RoBERTa + byte-level BPE (``Ġ`` word starts), XLM-R + SentencePiece-style
Unigram (``▁`` word starts)."""
from __future__ import annotations

from tiny_models import CORPUS, make_bpe_tokenizer, make_wordpiece_tokenizer


def make_unigram_tokenizer(vocab_size: int = 300):
    """An XLM-R-like tokenizer: Unigram model with Metaspace (``▁``) pre-tokenisation, <s> ... </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def make_classifier(family: str, *, window: int = 64, seed: int = 0):
    """``(model, tokenizer)`` of a 2-label token classifier: family bert | roberta | xlmr."""
    import torch
    from transformers import (BertConfig, BertForTokenClassification, RobertaConfig, RobertaForTokenClassification,
                              XLMRobertaConfig, XLMRobertaForTokenClassification)

    torch.manual_seed(seed)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2)
    if family == "bert":
        tok = make_wordpiece_tokenizer()
        model = BertForTokenClassification(BertConfig(vocab_size=len(tok), max_position_embeddings=window,
                                                      pad_token_id=tok.pad_token_id, **small))
    elif family == "roberta":
        tok = make_bpe_tokenizer()
        model = RobertaForTokenClassification(RobertaConfig(vocab_size=len(tok), max_position_embeddings=window + 2,
                                                            pad_token_id=tok.pad_token_id, **small))
        tok.model_max_length = window
    elif family == "xlmr":
        tok = make_unigram_tokenizer()
        model = XLMRobertaForTokenClassification(XLMRobertaConfig(
            vocab_size=len(tok), max_position_embeddings=window + 2, pad_token_id=tok.pad_token_id, **small))
    else:
        raise ValueError(family)
    return model.eval(), tok
