"""SwitchBack int8 matmuls for frozen linear layers (``train.frozen_matmuls: int8``): the products of bitsandbytes'
vector-wise SwitchBack, only for frozen layers and only while gradients are on (that a tiny compressor still learns
through them: tests/test_meanpool.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.models.switchback import SwitchBackMatmul, int8_frozen_linears, quantize_rows
from mmcompress.soft.losses import Example, collate
from mmcompress.soft.meanpool import MeanPoolCompressor
from mmcompress.training.trainer import TrainConfig
from tiny_models import loss_and_grads, perturb

pytestmark = pytest.mark.usefixtures("one_thread")


# A restatement of bitsandbytes, commit 1273a5d0617ba12899e53936803ed2cf0794fadf,
# bitsandbytes/nn/triton_based_modules.py:71-110 (_switchback_vectorrize) with its Triton kernels written out in
# float64: bitsandbytes/triton/quantize_rowwise.py (round(127 * x / max) per row, the max kept),
# quantize_columnwise_and_transpose.py (the same per column) and int8_matmul_rowwise_dequantize.py
# (int32 products scaled by max_x * max_w / 127**2).
def bnb_quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = x.double().abs().amax(dim=dim, keepdim=True)
    return torch.round(127.0 * (x.double() / top)), top


def bnb_switchback_vectorwise(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor):
    x_q, x_max = bnb_quantize(x, dim=1)
    w_q, w_max = bnb_quantize(weight, dim=1)  # the forward's W: by rows (output features)
    out = (x_q @ w_q.t()) * (x_max * w_max.t() / 127**2)
    g_q, g_max = bnb_quantize(grad_out, dim=1)
    w_cq, w_cmax = bnb_quantize(weight, dim=0)  # the input gradient's W: by columns (input features)
    grad_x = (g_q @ w_cq) * (g_max * w_cmax / 127**2)
    return out, grad_x


def int8_arguments(weight: torch.Tensor):
    rows, row_scale = quantize_rows(weight)
    cols, col_scale = quantize_rows(weight.t())
    return rows.t().contiguous(), row_scale.reshape(1, -1), cols.t().contiguous(), col_scale.reshape(1, -1)


def test_the_products_are_bitsandbytes_vectorwise_switchback():
    torch.manual_seed(0)
    weight = torch.randn(24, 40) * torch.linspace(0.1, 3, 40)  # columns of different scales: by-column matters
    x = torch.randn(2, 7, 40, requires_grad=True)
    grad_out = torch.randn(2, 7, 24)
    out = SwitchBackMatmul.apply(x, *int8_arguments(weight))
    out.backward(grad_out)
    want_out, want_grad = bnb_switchback_vectorwise(x.detach().reshape(14, 40), weight, grad_out.reshape(14, 24))
    torch.testing.assert_close(out.detach().reshape(14, 24).double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.reshape(14, 40).double(), want_grad, rtol=1e-5, atol=1e-5)
    exact = torch.randn(14, 40) @ weight.t()  # and int8 stays near the float product (a few percent at most)
    assert (out.detach().reshape(14, 24) - x.detach().reshape(14, 40) @ weight.t()).norm() < 0.03 * exact.norm()


def tiny_meanpool(tiny_dir, dtype="float32"):
    c = MeanPoolCompressor(model=str(tiny_dir), pool_ratio=4, chunk_tokens=16, lora_r=4, device="cpu", dtype=dtype)
    perturb(c)  # non-zero LoRA B, so every adapter weight has a gradient
    c.module.eval()  # no dropout: both passes compute the same function
    return c


def batch_of(c):
    tok = c.tokenizer
    texts = ["Super Bowl 50 was an American football game to determine the champion of the league.",
             "Paris is the capital and most populous city of France, on the Seine."]
    return collate([Example(ids[:16], [], ids[:16] + [tok.eos_token_id], "ae")
                    for ids in tok(texts, add_special_tokens=False)["input_ids"]], 16, tok.pad_token_id)


def test_only_frozen_layers_below_the_head_change_and_the_adapter_gradients_keep_their_direction(tiny_dir):
    c = tiny_meanpool(tiny_dir)
    module, batch = c.module, batch_of(c)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    native_loss, native = loss_and_grads(module, batch)
    with torch.no_grad():
        native_eval = module.evaluation_step(batch)["loss"]

    frozen = [m for n, m in module.named_modules() if type(m) is nn.Linear and not m.weight.requires_grad]
    head = c.llm.get_output_embeddings()
    assert int8_frozen_linears(module) == len(frozen) - 1  # every frozen linear but the LM head
    assert not hasattr(head.forward, "int8_weights")
    assert all(hasattr(m.forward, "int8_weights") for m in frozen if m is not head)
    assert not any(hasattr(m.forward, "int8_weights") for m in module.modules()
                   if type(m) is nn.Linear and m.weight.requires_grad)  # the adapter trains as it did
    assert module.state_dict().keys() == state.keys()  # the int8 copies are not saved
    assert int8_frozen_linears(module) == 0  # a second call leaves them as they are

    int8_loss, int8 = loss_and_grads(module, batch)
    assert int8.keys() == native.keys()  # every adapter weight still gets its gradient through the int8 layers
    assert int8_loss == pytest.approx(native_loss, rel=0.05) and int8_loss != native_loss
    flat = [torch.cat([g[n].flatten() for n in native]) for g in (native, int8)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.98
    with torch.no_grad():  # evaluation reads the original weights
        assert module.evaluation_step(batch)["loss"] == native_eval


def test_a_weight_written_in_place_is_quantized_again(tiny_dir):
    c = tiny_meanpool(tiny_dir)
    int8_frozen_linears(c.module)
    layer = next(m for m in c.module.modules() if hasattr(m.forward, "int8_weights"))
    x = torch.randn(3, layer.in_features)
    with torch.enable_grad():
        before = layer(x)
        with torch.no_grad():
            layer.weight.mul_(2)
        after = layer(x)
    torch.testing.assert_close(after, 2 * before, rtol=1e-2, atol=1e-4)


def test_a_compiled_layer_reads_a_weight_written_in_place_as_the_eager_layer_does(tiny_dir):
    """The check cannot run inside a compiled graph: compiled layers quantize stale copies again before entering."""
    from mmcompress.models.compile import compile_blocks

    c = tiny_meanpool(tiny_dir)
    module = c.module
    int8_frozen_linears(module)
    batch = batch_of(c)
    torch._dynamo.reset()
    compile_blocks(module)

    def gradients():
        return loss_and_grads(module, batch)[1]

    before = gradients()  # traced and compiled with the weights as they were
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every converted layer of the first block gets new weights, in place
        for sub in c.llm.get_decoder().layers[0].modules():
            if hasattr(sub.forward, "int8_weights"):
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=g) * sub.weight.std())
    compiled = gradients()
    for block in c.llm.get_decoder().layers:  # the same layers, eager
        block.__dict__.pop("forward", None)
    eager = gradients()
    # compiled layers give zeros where eager ones give no gradient (weights the loss does not reach): compare the rest
    names = sorted(eager)
    before, compiled, eager = (torch.cat([g[n].flatten() for n in names]) for g in (before, compiled, eager))
    assert (before - eager).norm() > 0.1 * eager.norm()  # the write matters
    assert (compiled - eager).norm() < 1e-3 * eager.norm()


def test_the_trainer_setting_converts_the_frozen_layers_before_compiling(tiny_dir, tmp_path):
    from mmcompress.training.trainer import Trainer

    c = tiny_meanpool(tiny_dir)
    data = [Example(list(range(3, 19)), [], list(range(3, 19)) + [2], "ae")] * 2
    trainer = Trainer(c.module, TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=2,
                                            frozen_matmuls="int8", progress=False),
                      data, collate_fn=lambda rows: collate(rows, 16, 0))
    up = c.llm.get_decoder().layers[0].mlp.up_proj
    assert hasattr(getattr(up, "base_layer", up).forward, "int8_weights")  # under its adapter, when it has one
    assert trainer.train().steps == 1


def test_train_config_refuses_an_unknown_frozen_matmul_mode():
    assert TrainConfig().frozen_matmuls == "native"
    with pytest.raises(ConfigError, match="frozen_matmuls must be native or int8"):
        TrainConfig(frozen_matmuls="fp8")
