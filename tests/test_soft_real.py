"""Soft methods on the real embedded SmolLM2-135M (slow tier): they run, batch, and keep the KV contract."""
from __future__ import annotations

import pytest
import torch

from mmcompress import create_compressor
from mmcompress.soft.chunking import TASK_IDS
from mmcompress.soft.losses import Example, collate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["icae", "kv"])
def test_soft_methods_run_on_smollm2_and_batch(method, squad_rows):
    c = create_compressor(method, model="smollm2-135m", device="cpu", dtype="float32", max_new_tokens=4)
    rows = squad_rows[:2]
    soft = c.compress_batch([[r["context"]] for r in rows], question="What is this about?")
    n = len(c.tokenizer(rows[0]["context"], add_special_tokens=False)["input_ids"])
    assert soft.items[0][0].num_tokens == 32 * -(-n // 128)  # 32 slots per started 128-token chunk
    together = c.generate(soft)
    assert together == [c.generate(soft[i])[0] for i in range(2)]


def test_kv_cache_contract_on_smollm2():
    """Empty context + fresh LoRA: decoding after the slots' KV equals one forward over [slots, marker, text]."""
    c = create_compressor("kv", model="smollm2-135m", device="cpu", dtype="float32", num_slots=4)
    module, tok = c.module, c.tokenizer
    ids = tok("The river flows to the sea.", add_special_tokens=False)["input_ids"]
    batch = collate([Example([], [], ids, "lm")], 16, tok.pad_token_id)
    chunks = module.chunks_from_batch(batch)
    with torch.no_grad():
        hidden, _ = module.decoder_hidden(module.compress_chunks(chunks), chunks, batch)
        emb = module.encoder.llm.get_input_embeddings()(torch.tensor(ids))
        inputs = torch.cat([module.encoder.slots, module.markers[TASK_IDS["lm"]][None], emb])[None]
        with module.encoder.decoder():
            manual = module.encoder.backbone(inputs_embeds=inputs).last_hidden_state[0, 4:]
    assert torch.allclose(hidden[0], manual, atol=1e-3)


def test_the_fused_chunked_loss_trains_the_4x_step_as_the_sliced_one_on_smollm2(squad_rows):
    """The trainer's default loss on the real 4x step (SmolLM2's 49,152-word head over several chunks of rows): the
    sliced loss's value and LoRA gradients. In float32: in bfloat16 the two differ by rounding, which the step's
    backward amplifies by a thread-count-dependent amount (benchmarks/soft_grad_precision.py compares both there)."""
    c = create_compressor("meanpool", model="smollm2-135m", device="cpu", dtype="float32", pool_ratio=4,
                          chunk_tokens=64, lora_r=8)
    tok = c.tokenizer
    examples = []
    for row in squad_rows[:4]:
        ids = tok(row["context"], add_special_tokens=False)["input_ids"][:64]
        examples.append(Example(ids, [], ids + [tok.eos_token_id], "ae"))
    batch = collate(examples, 64, tok.pad_token_id)
    for p in c.module.parameters():  # LoRA B away from zero, so that the A matrices get gradients too
        if p.requires_grad and p.dim() == 2:
            torch.nn.init.normal_(p, std=0.01)

    def step(loss):
        c.module.lm_loss = loss
        c.module.zero_grad(set_to_none=True)
        out = c.module.training_step(batch)
        out["loss"].backward()
        grads = torch.cat([p.grad.float().flatten() for p in c.module.parameters() if p.grad is not None])
        return float(out["loss"]), float(out["token_accuracy"]), grads

    chunked, sliced = step("chunked"), step("sliced")
    assert abs(chunked[0] - sliced[0]) < 1e-4 and chunked[1] == sliced[1]
    assert (chunked[2] - sliced[2]).norm() < 1e-3 * sliced[2].norm()
