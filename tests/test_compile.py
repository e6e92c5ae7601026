"""``compile: layers``: each decoder layer under torch.compile must train as the eager layers do (tiny random
Llamas: the same numbers in float32, finite and the same direction in bfloat16), only while gradients are on."""
from __future__ import annotations

import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.models.compat import cache_kwargs, new_cache
from mmcompress.models.compile import compile_blocks, repeated_blocks
from mmcompress.soft.losses import Example, collate
from mmcompress.soft.meanpool import MeanPoolCompressor
from mmcompress.training.trainer import TrainConfig
from tiny_models import loss_and_grads, make_bpe_tokenizer, make_llama, perturb

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = ["Super Bowl 50 was an American football game to determine the champion of the National Football League.",
        "Paris is the capital and most populous city of France."]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama with 32-wide heads, read in 64-token chunks (SmolLM2's heads are 64 wide)."""
    folder = tmp_path_factory.mktemp("tiny-llama-32-heads")
    make_llama(make_bpe_tokenizer(), folder, hidden=128)
    return folder


@pytest.mark.parametrize(("dtype", "decoder_lora_r"), [("float32", 0), ("float32", 4), ("bfloat16", 0)])
def test_compiled_layers_give_the_eager_loss_and_gradients(llama_dir, dtype, decoder_lora_r):
    """The meanpool step through compiled layers: the encoder fills a cache inside each of them and the decoder reads
    it, with one adapter or two."""
    torch._dynamo.reset()  # compile afresh for this model
    c = MeanPoolCompressor(model=str(llama_dir), pool_ratio=4, chunk_tokens=64, lora_r=4, device="cpu", dtype=dtype,
                           decoder_lora_r=decoder_lora_r)  # a decoder adapter: the layers switch adapters per pass
    perturb(c)  # non-zero LoRA B, so every adapter weight has a gradient
    module = c.module
    module.eval()  # no dropout: both passes compute the same function
    tok = c.tokenizer
    texts = [" ".join([doc] * 4) for doc in DOCS]  # one full 64-token chunk each, and more
    examples = [Example(ids[:64], [], ids[:64] + [tok.eos_token_id], "ae")
                for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert all(len(e.context) == 64 for e in examples)
    batch = collate(examples, 64, tok.pad_token_id)
    eager_loss, eager = loss_and_grads(module, batch)

    assert compile_blocks(module) == c.llm.config.num_hidden_layers
    compiled_loss, compiled = loss_and_grads(module, batch)

    assert eager.keys() <= compiled.keys() and any("lora_A" in n for n in eager)
    for name in compiled.keys() - eager.keys():  # weights the loss does not reach (the last layer's query, MLP...):
        assert not compiled[name].any(), name  # eager leaves them without a gradient, compiled gives zeros
    for name in eager:
        assert torch.isfinite(compiled[name]).all(), f"{name}: non-finite gradient when compiled"
    if dtype == "float32":
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
        for name, grad in eager.items():
            torch.testing.assert_close(compiled[name], grad, rtol=1e-3, atol=1e-6, msg=f"{name} differs when compiled")
    else:  # the base model in bfloat16 rounds differently when fused: the same direction, not the same digits
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-2)
        flat = [torch.cat([g[n].float().flatten() for n in eager]) for g in (eager, compiled)]
        assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99


def test_compiled_blocks_of_a_model_filling_its_cache_keep_finite_gradients_in_bfloat16():
    """The failure behind the 256-bit kernels: a Llama whose layers fill a cache, in bfloat16, under inductor's
    default AVX-512 kernels, gave NaN gradients at these shapes (32-wide heads, 64 tokens; torch 2.14, CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch._dynamo.reset()
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, num_hidden_layers=1, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.randint(0, 96, (2, 64))

    def grads():
        model.zero_grad(set_to_none=True)
        cache = new_cache(model)
        logits = model(ids, use_cache=True, **cache_kwargs(model, cache)).logits
        keys = cache.layers[0].keys
        (logits.float().square().mean() + keys.float().square().mean()).backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    eager = grads()
    assert compile_blocks(model) == 1
    compiled = grads()
    for name, want in eager.items():
        assert torch.isfinite(compiled[name]).all(), f"{name}: non-finite gradient when compiled"
        assert (compiled[name] - want).norm() <= 0.05 * want.norm(), name


def test_compile_blocks_finds_each_decoder_layer_once_and_keeps_a_version_for_each(tiny_dir):
    c = MeanPoolCompressor(model=str(tiny_dir), pool_ratio=4, chunk_tokens=16, lora_r=4, device="cpu",
                           dtype="float32")
    layers = list(c.llm.model.layers) if hasattr(c.llm, "model") else None
    blocks = repeated_blocks(c.module)  # the layers are reached through peft's wrappers and the encoder/decoder
    assert len(blocks) == c.llm.config.num_hidden_layers
    assert {id(b) for b in blocks} == {id(layer) for layer in layers or c.module.encoder.backbone.layers}
    before = torch._dynamo.config.recompile_limit
    try:
        torch._dynamo.config.recompile_limit = 8
        compile_blocks(c.module)
        assert torch._dynamo.config.recompile_limit >= 8 * len(blocks)
        assert all(callable(getattr(b.forward, "compiled", None)) for b in blocks)
        wrapped = [b.forward for b in blocks]
        compile_blocks(c.module)  # a second call leaves the compiled blocks as they are
        assert [b.forward for b in blocks] == wrapped
    finally:
        torch._dynamo.config.recompile_limit = before


def test_compiled_blocks_run_eagerly_without_gradients(tiny_dir):
    """Evaluation and generation (no gradients) meet a new length at nearly every call: they must not compile."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    compile_blocks(model)
    counters.clear()
    with torch.no_grad():
        for length in (3, 5, 9):
            model(torch.arange(1, length + 1)[None])
    assert not counters["stats"]["unique_graphs"]
    model(torch.arange(1, 6)[None]).logits.sum().backward()
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize(("given", "meant"), [(False, "no"), (True, "layers"), ("layers", "layers"), ("step", "step")])
def test_train_config_compile_values(given, meant):
    assert TrainConfig(compile=given).compile == meant


def test_train_config_refuses_an_unknown_compile_mode():
    with pytest.raises(ConfigError, match="compile must be"):
        TrainConfig(compile="everything")


@pytest.mark.parametrize("layers", [2, 4])
def test_every_layer_shares_one_compiled_graph_and_fills_its_own_cache_entry(layers):
    """Each layer hands its cache its own index; seen through ``OneLayerCache`` all layers compile once (not once
    per layer, which took minutes for SmolLM2's 30), and each still writes the keys and values of its own entry."""
    from torch._dynamo.utils import counters
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=layers, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 96, (2, 12))

    def step():
        model.zero_grad(set_to_none=True)
        cache = new_cache(model)
        model(ids, use_cache=True, **cache_kwargs(model, cache)).logits.square().mean().backward()
        return [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]

    eager = step()
    graphs = {}
    for share in (False, True):
        torch._dynamo.reset()
        counters.clear()
        for block in repeated_blocks(model):  # undo the last compile_blocks (an instance attribute): compile afresh
            block.__dict__.pop("forward", None)
        compile_blocks(model, share_graphs=share)
        compiled = step()
        graphs[share] = counters["stats"]["unique_graphs"]
        assert len(compiled) == layers
        for i, ((k, v), (k0, v0)) in enumerate(zip(compiled, eager)):
            torch.testing.assert_close(k, k0, msg=f"layer {i}'s keys")
            torch.testing.assert_close(v, v0, msg=f"layer {i}'s values")
    assert graphs[True] == 1
    assert graphs[False] == layers  # what the view saves: a graph (and a trace of minutes) per layer


def test_the_trainer_warns_of_bfloat16_eager_attention_only_uncompiled(caplog):
    """bfloat16 eager attention's gradients stray far from float32's (benchmarks/soft_grad_precision.py): training it
    uncompiled is warned of; SDPA, float32 and compiled layers are not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmcompress.training.trainer import warn_eager_bfloat16_attention

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=1)
    model = LlamaForCausalLM(config)
    for attention, dtype, warns in [("eager", torch.bfloat16, True), ("sdpa", torch.bfloat16, False),
                                    ("eager", torch.float32, False)]:
        model.set_attn_implementation(attention)
        assert warn_eager_bfloat16_attention(model.to(dtype)) is warns, (attention, dtype)
    with caplog.at_level("WARNING"):
        model.set_attn_implementation("eager")
        warn_eager_bfloat16_attention(torch.nn.ModuleDict({"llm": model.to(torch.bfloat16)}))
    assert "attn_implementation: sdpa" in caplog.text


def test_a_layer_asking_its_cache_more_than_update_gets_the_whole_caches_answer():
    """Some architectures' layers read their cache's length or mask sizes: the one-layer view answers as the cache."""
    from transformers import DynamicCache

    from mmcompress.models.compile import OneLayerCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    view = OneLayerCache(cache, 1)  # a layer the cache has not reached yet: made as the cache would make it
    keys, _ = view.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), 1)
    assert keys.shape[-2] == 3 and len(cache.layers) == 2 and cache.layers[1].keys is keys
    assert view.get_seq_length() == cache.get_seq_length() == 5
    assert view.get_seq_length(1) == 3
