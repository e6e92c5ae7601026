"""ICAE v2 and 500xCompressor checkpoints, loaded from tiny fixtures in their released layout, against the golden
outputs of the official code (tests/published_reference/icae.py, xcompressor500.py: getao/icae@469a468 with
transformers 4.36.2 + peft 0.7.1; ZongqianLi/500xCompressor@c85c1d7 with transformers 4.42.3 + peft 0.11.1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcompress
from mmcompress import ConfigError, Pipeline, Prompt
from mmcompress.results import SoftSegment

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "published"
ICAE, X500 = FIXTURES / "icae", FIXTURES / "xcompressor500"
ICAE_GOLDEN = json.loads((ICAE / "golden.json").read_text())
X500_GOLDEN = json.loads((X500 / "golden.json").read_text())
TOL = 1e-4  # max-abs, float32


def load_icae(checkpoint=ICAE / ICAE_GOLDEN["checkpoint"], **overrides):
    return mmcompress.create_compressor("icae", checkpoint=checkpoint, model=str(ICAE / ICAE_GOLDEN["base"]),
                                        dtype="float32", **overrides)


def load_500x(source=X500 / "checkpoint-1", **overrides):
    kw = {"model": str(X500 / "llama3-tiny"), "dtype": "float32", "context_len": X500_GOLDEN["context_len"],
          "max_length": X500_GOLDEN["max_length"], **overrides}
    if Path(source).is_dir():
        return mmcompress.create_compressor(source, **kw)
    return mmcompress.create_compressor("kv", checkpoint=source, **kw)


def max_abs(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@pytest.fixture(scope="module")
def icae():
    return load_icae()


@pytest.fixture(scope="module")
def x500():
    return load_500x()


# ------------------------------------------------------------------------------------------------- parity
def test_icae_matches_the_official_code(icae):
    g = ICAE_GOLDEN
    assert icae.name == "icae" and icae.config.num_slots == g["mem_size"]
    assert icae.config.chunk_tokens == g["mem_size"] * g["mean_compression_rate"] and icae.config.lora_r == g["lora_r"]
    assert icae.tokenize_spans([g["text"]])[0] == g["input_ids"]  # BOS + text, as the official tokenizer call
    assert icae.config.decoder_prefix_ids == g["template_left"]
    soft = icae.compress(g["text"])
    slots = soft.items[0][0].embeddings
    assert slots.shape[0] == g["num_segments"] * g["mem_size"] and max_abs(slots, g["memory_slots"]) < TOL
    assert max_abs(icae.next_token_logits(soft, task="ae")[0], g["ae_logits"]) < TOL  # [slots] [AE]
    # <s>[INST] [slots] [FT] prompt [/INST]
    assert max_abs(icae.next_token_logits(soft, g["prompt"], task="qa")[0], g["ft_logits"]) < TOL
    tok = icae.tokenizer
    assert icae.generate(soft, task="ae", max_new_tokens=6) == [tok.decode(g["ae_tokens"], skip_special_tokens=True)]
    assert icae.generate(soft, g["prompt"], max_new_tokens=6) == [tok.decode(g["ft_tokens"], skip_special_tokens=True)]


def test_icae_official_input_options_matter():
    """mmcompress's own ICAE reads the text without BOS and the question without the [INST] template: each
    difference alone moves the outputs away from the official ones (so the test above can fail)."""
    g = ICAE_GOLDEN
    no_bos = load_icae(encoder_bos=False).compress(g["text"])
    assert max_abs(no_bos.items[0][0].embeddings, g["memory_slots"]) > 1e-2
    plain = load_icae(template="pretrained")
    assert max_abs(plain.next_token_logits(plain.compress(g["text"]), g["prompt"])[0], g["ft_logits"]) > 1e-2


@pytest.mark.parametrize("source", ["checkpoint-1", "lora.pt"])
def test_500x_matches_the_official_code(source):
    g = X500_GOLDEN
    c = load_500x(X500 / source)
    assert c.name == "kv" and c.config.num_slots == g["num_mem"] and c.config.pad_to == g["context_len"]
    assert c.tokenize_spans([g["text"]])[0] == g["text_ids"]
    soft = c.compress(g["text"])
    kv = soft.items[0][0].kv
    assert len(kv) == len(g["keys"])
    assert max(max_abs(k, gk) for (k, _), gk in zip(kv, g["keys"])) < TOL
    assert max(max_abs(v, gv) for (_, v), gv in zip(kv, g["values"])) < TOL
    assert max_abs(c.next_token_logits(soft, task="ae")[0], g["ae_logits"]) < TOL  # [BOS] after the cache
    assert max_abs(c.next_token_logits(soft, g["question"])[0], g["qa_logits"]) < TOL  # "Question: q Answer: "
    assert c.generate(soft, task="ae", max_new_tokens=6) == [g["ae_text"]]
    assert c.generate(soft, g["question"], max_new_tokens=6) == [g["qa_text"]]


def test_500x_official_positions_and_padding_matter():
    g = X500_GOLDEN
    for overrides in ({"slot_positions": "prefix"}, {"context_len": g["max_length"]}):
        c = load_500x(**overrides)
        assert max_abs(c.next_token_logits(c.compress(g["text"]), g["question"])[0], g["qa_logits"]) > 1e-3


# ------------------------------------------------------------------------------------------------- layout
def test_folders_are_recognised_by_create_compressor():
    from mmcompress.soft.published import detect_format

    assert detect_format(ICAE).name == "icae" and detect_format(X500 / "checkpoint-1").name == "500xcompressor"
    assert detect_format(ICAE / ICAE_GOLDEN["base"]) is None and detect_format(X500) is None
    c = mmcompress.create_compressor(ICAE, model=str(ICAE / ICAE_GOLDEN["base"]), dtype="float32")
    assert c.name == "icae" and c.config.decoder_suffix_ids  # the file name says "ft": the [INST] template


def test_wrong_or_mismatched_files_are_clear_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(ICAE / ICAE_GOLDEN["checkpoint"]))
    save_file({k: v for k, v in weights.items() if k != "memory_token_embed.weight"}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ConfigError, match="memory_token_embed"):
        load_icae(checkpoint=tmp_path / "a.safetensors")
    save_file({"memory_token_embed.weight": weights["memory_token_embed.weight"]}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ConfigError, match="no LoRA tensors under 'icae.'"):
        load_icae(checkpoint=tmp_path / "b.safetensors")
    # an ICAE file on the 500x fixture's base: the widths agree (32) but the LoRA targets a Mistral; a base of
    # another width is named as such
    wide = {k: (torch.zeros(v.shape[0], 48) if k == "memory_token_embed.weight" else v) for k, v in weights.items()}
    save_file(wide, str(tmp_path / "c.safetensors"))
    with pytest.raises(ConfigError, match="width 48.*hidden size 32"):
        load_icae(checkpoint=tmp_path / "c.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        mmcompress.create_compressor("icae", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="has no published checkpoint format"):
        mmcompress.create_compressor("meanpool", checkpoint=ICAE / ICAE_GOLDEN["checkpoint"])
    torch.save({"something": torch.zeros(2)}, tmp_path / "lora.pt")
    with pytest.raises(ConfigError, match="memory_embeddings"):
        load_500x(tmp_path / "lora.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a published checkpoint layout"):
        mmcompress.create_compressor(tmp_path / "empty")


# ------------------------------------------------------------------------------------- batched and mixed
@pytest.mark.parametrize("which", ["icae", "500x"])
def test_loaded_compressors_batch_mix_and_pipeline(which, icae, x500):
    c = icae if which == "icae" else x500
    docs = ["Paris is the capital and most populous city of France.",
            "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area."]
    one = [c.compress(d) for d in docs]
    batch = c.compress_batch(docs)
    for single, item in zip(one, batch.items):
        a, b = single.items[0][0], item[0]
        got, want = (b.embeddings, a.embeddings) if which == "icae" else (b.kv[0][0], a.kv[0][0])
        assert max_abs(got, want) < 1e-5  # padding in a batch changes nothing
    assert c.generate(batch, "Which city?", max_new_tokens=3) == [c.generate(s, "Which city?", max_new_tokens=3)[0]
                                                                   for s in one]
    # mixed: a kept instruction (text) before the soft document, the question after it
    prompt = Prompt.from_documents([docs[0]], instruction="Answer briefly.", question="Which city?")
    mixed = c.compress(prompt)
    kinds = [type(p).__name__ for p in mixed.items[0]]
    assert kinds == ["TextSegment", "SoftSegment", "TextSegment"]
    kept = mixed.compressed_tokens[0] - mixed.items[0][1].num_tokens  # the kept text as the decoder reads it
    assert kept == c.count_tokens(["Answer briefly.\n\nWhich city?"])[0]
    assert len(c.generate(mixed, max_new_tokens=3)) == 1
    assert not torch.equal(c.next_token_logits(mixed), c.next_token_logits(c.compress(docs[0]), "Which city?"))
    # hard then soft
    pipe = Pipeline([{"compressor": "truncate", "model": c.config.model, "rate": 0.5}, c])
    result = pipe.compress(docs, question="Which city?")
    assert [s["method"] for s in result.extras["stages"]] == ["truncate", c.name]
    assert isinstance(result.items[0][0], SoftSegment) and result.items[0][-1].text == "Which city?"
    assert result.ratio >= c.compress(docs, question="Which city?").ratio  # fewer chunks, never more
    assert len(pipe.generate(result, max_new_tokens=2)) == 1
