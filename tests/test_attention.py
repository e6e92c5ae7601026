"""``eager_float32`` (mmcompress/models/attention.py): a model's own eager attention, run in float32."""
from __future__ import annotations

import pytest
import torch
from tiny_models import make_bpe_tokenizer, make_gemma3, make_llama

from mmcompress.models.attention import EAGER_FLOAT32, eager_float32_attention, register


@pytest.fixture(scope="module")
def tokenizer():
    return make_bpe_tokenizer()


@pytest.mark.parametrize("make", [make_llama, make_gemma3], ids=["llama", "gemma3-sliding-window"])
def test_in_float32_it_is_the_models_eager_attention(make, tokenizer):
    """Same logits as ``eager`` for a float32 model, padded rows and Gemma 3's sliding-window layer included: the
    masks and the model's own attention function reach it."""
    register()
    model = make(tokenizer)
    ids = torch.randint(3, len(tokenizer), (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    model.set_attn_implementation("eager")
    want = model(input_ids=ids, attention_mask=mask).logits
    model.set_attn_implementation(EAGER_FLOAT32)
    got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_bfloat16_inputs_are_attended_in_float32_and_the_gradient_flows(tokenizer):
    model = make_llama(tokenizer).to(torch.bfloat16)
    attention = model.model.layers[0].self_attn
    module_file = __import__(type(attention).__module__, fromlist=["eager_attention_forward"])
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, 6, 8, dtype=torch.bfloat16, requires_grad=True) for heads in (4, 2, 2))
    mask = torch.full((6, 6), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16).triu(1)[None, None]
    out, _ = eager_float32_attention(attention, q, k, v, mask, attention.scaling)
    want, _ = module_file.eager_attention_forward(attention, q.float(), k.float(), v.float(), mask.float(),
                                                  attention.scaling)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want.to(torch.bfloat16))
    bf16, _ = module_file.eager_attention_forward(attention, q, k, v, mask, attention.scaling)
    assert not torch.equal(out, bf16)  # bfloat16 all through rounds differently
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_a_model_file_without_an_eager_attention_is_refused():
    class Attention(torch.nn.Module):  # this test file defines no eager_attention_forward
        pass

    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(NotImplementedError, match="no eager_attention_forward"):
        eager_float32_attention(Attention(), q, q, q, None, 1.0)


def test_model_kwargs_name_it_when_loading(tiny_dir):
    from mmcompress.models import load_language_model

    lm = load_language_model(str(tiny_dir), device="cpu", dtype="bfloat16",
                             model_kwargs={"attn_implementation": EAGER_FLOAT32})
    assert lm.model.config._attn_implementation == EAGER_FLOAT32
    assert torch.isfinite(lm.model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
