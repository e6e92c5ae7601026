"""Tiny, randomly initialised models and tokenizers built offline in the test session (well under a second).

- ``make_bpe_tokenizer``: a byte-level BPE (GPT-2/Llama-3 style) trained on a few paragraphs of English.
- ``make_wordpiece_tokenizer``: an uncased WordPiece (BERT style), its vocabulary frozen in ``fixtures/``.
- ``make_llama`` / ``make_gpt2``: causal LMs with a rotary (Llama) or learned absolute (GPT-2) position scheme and a
  small context window, so "longer than the window" inputs are cheap to build.
"""
from __future__ import annotations

from pathlib import Path

CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Super Bowl 50 was an American football game to determine the champion of the National Football League for the 2015
season. The American Football Conference champion Denver Broncos defeated the National Football Conference champion
Carolina Panthers to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in
the San Francisco Bay Area at Santa Clara, California.
Paris is the capital and most populous city of France. Berlin is the capital of Germany. The river flows to the sea.
Photosynthesis converts light energy into chemical energy that can later be released to fuel the organism.
What is the capital of France? Which team won the game? Answer the question using the documents.
Neural networks learn representations from data; transformers use attention over tokens. 0123456789 !?,.;:'"()-
"""


def make_bpe_tokenizer(folder: Path | None = None, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


# The WordPiece vocabulary, frozen in a file: the tokenizers trainer breaks ties between equally frequent pieces in
# the order of a randomly seeded hash map, so a vocabulary trained in each process differed from run to run (and with
# it every tiny model built on it, which made tests on those models pass or fail by chance)
WORDPIECE_VOCAB = Path(__file__).with_name("fixtures") / "tiny_wordpiece_vocab.txt"


def make_wordpiece_tokenizer(folder: Path | None = None):
    """The uncased WordPiece (BERT style) of :data:`WORDPIECE_VOCAB` (400 pieces, once trained on :data:`CORPUS`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece.from_file(str(WORDPIECE_VOCAB), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def make_llama(tokenizer, folder: Path | None = None, window: int = 128, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model


def make_gemma3(tokenizer, window: int = 4, seed: int = 0, hidden: int = 32):
    """A tiny Gemma 3 text model: a sliding-window layer (``window`` positions, local rotary base) then a full
    attention layer (global base), QK-norm and scaled embeddings, as the real Gemma 3 270M."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=window,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Gemma3ForCausalLM(config).eval()


def make_gpt2(tokenizer, folder: Path | None = None, window: int = 64, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=window, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model


def make_learnable_llama(tokenizer, hidden_size: int = 64):
    """A tiny Llama whose random logits are not flat (larger init) and with no zeroed padding row, so that losses
    through it can really move in a few steps (learning tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, tie_word_embeddings=True, pad_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config).eval()


def learn_reconstruction(compressor, spans, tokenizer, chunk_tokens: int, steps: int = 150, lr: float = 1e-2):
    """Train a soft compressor's module on autoencoding ``spans`` (token id lists) until 95% train accuracy or
    ``steps``; returns ``(first step's accuracy, final accuracy in eval mode)`` (learning tests)."""
    import torch

    from mmcompress.soft.losses import Example, collate

    module = compressor.module
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    batch = collate([Example(s, [], s + [tokenizer.eos_token_id], "ae") for s in spans], chunk_tokens,
                    tokenizer.pad_token_id)
    first = None
    for _ in range(steps):
        out = module.training_step(batch)
        first = first if first is not None else float(out["token_accuracy"])
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        if out["token_accuracy"] >= 0.95:
            break
    module.eval()
    return first, module.evaluation_step(batch)["token_accuracy"]


def loss_and_grads(module, batch):
    """One training step's loss and the gradient of every parameter it reaches (name -> a copy)."""
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch)["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def perturb(compressor, seed: int = 0):
    """Give the LoRA B matrices non-zero values (fresh LoRA is the identity), as after some training."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in compressor.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
