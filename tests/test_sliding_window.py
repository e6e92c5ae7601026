"""Models with sliding-window layers (Gemma 3: local and global rotary bases, QK-norm) on a tiny random Gemma 3: the
caches mmcompress builds can be fed in pieces, cropped and evicted past the window, and cached keys move to another
position with their own layer's rotary base."""
from __future__ import annotations

import pytest
import torch

from mmcompress.models.compat import cache_kwargs, new_cache, output_cache
from mmcompress.soft.kv import shift_rotary_keys
from tiny_models import make_bpe_tokenizer, make_gemma3

WINDOW = 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gemma():
    tok = make_bpe_tokenizer()
    return make_gemma3(tok, window=WINDOW), tok


def _feed(model, ids, cache, positions=None):
    out = model(input_ids=ids, position_ids=positions, use_cache=True, **cache_kwargs(model, cache))
    return out.logits, output_cache(out)


def test_cache_fed_in_pieces_and_cropped_past_the_window_matches_one_pass(gemma):
    model, _ = gemma
    ids = torch.randint(5, 300, (1, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        cache, pieces = new_cache(model), []
        for a, b in ((0, 6), (6, 10), (10, 14)):
            logits, cache = _feed(model, ids[:, a:b], cache)
            pieces.append(logits)
        assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-5)
        cache.crop(-5)  # past the window: a sliding layer that forgot its old positions could not do this
        logits, _ = _feed(model, ids[:, 9:], cache)
    assert torch.allclose(logits, whole[:, 9:], atol=1e-5)


def test_llmlingua_compresses_a_prompt_longer_than_the_window(gemma):
    from mmcompress import create_compressor

    model, tok = gemma
    text = " ".join(["the quick brown fox jumps over the lazy dog while the cat sleeps"] * 4)
    compressor = create_compressor("llmlingua", model=model, tokenizer=tok, iterative_size=8, context_filter=False)
    result = compressor.compress(text, rate=0.5)
    assert result.origin_tokens > 4 * WINDOW and 0.3 < result.rate < 0.7


def test_shifted_keys_use_each_layers_rotary_base(gemma):
    """Keys cached at positions 0.. and moved by ``delta`` equal the keys cached at ``delta``..: per layer, since the
    sliding layer rotates with the local base and the full layer with the global one."""
    model, _ = gemma
    ids = torch.randint(5, 300, (1, 6), generator=torch.Generator().manual_seed(1))
    delta = 9
    with torch.no_grad():
        _, at_zero = _feed(model, ids, new_cache(model), torch.arange(6)[None])
        _, shifted = _feed(model, ids, new_cache(model), torch.arange(6)[None] + delta)
    for layer, (a, b) in enumerate(zip(at_zero.layers, shifted.layers)):
        assert not torch.allclose(a.keys, b.keys, atol=1e-3)  # the positions do change the keys
        moved = shift_rotary_keys(a.keys[0], delta, model.model, layer)
        assert torch.allclose(moved, b.keys[0], atol=1e-5), f"layer {layer} ({model.config.layer_types[layer]})"
