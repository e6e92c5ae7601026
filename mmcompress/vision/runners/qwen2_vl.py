"""Qwen2-VL and Qwen2.5-VL: dynamic resolution, a 2x2 patch merger, M-RoPE positions.

The reduction runs *after* the merger, on the LLM-ready tokens: the merger needs complete 2x2 groups, so reducing
before it would have to drop whole groups anyway, which is the same choice made after it, at a quarter of the cost.
The signals the reductions read are computed on the last vision block, per merged token:

- attention: the mean attention each patch receives in that block (heads and queries averaged; Qwen's tower has no
  CLS token, so this is VisionZip's rule for CLS-less towers), averaged over the token's 2x2 patches; it is recomputed
  from the block's own ``qkv`` output (captured, not recomputed) and rotary embedding, whatever attention kernel runs;
- keys: the block's keys before the rotary embedding (content, not position), averaged over the 2x2 patches.

Qwen2.5-VL's window attention reorders the patches inside the tower; the scores are put back in image order with
the same ``argsort(window_index)`` the model applies after its merger.

Positions: the model's own ``get_rope_index`` gives the full layout's M-RoPE positions; each kept token keeps the
(t, h, w) position of its merged token, text keeps its positions, and generation continues from the last one (a
token at no patch, PruMerge's extra token, takes the image's last position).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from ..encoders.base import EncoderOutput
from ..reduction.base import VisualReduction
from .base import ImageTokens, VLMRunner


class Qwen2VLRunner(VLMRunner):
    """``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def image_marker(self) -> str:
        return "<|vision_start|>" + self.processor.image_token + "<|vision_end|>"

    @property
    def visual(self):
        return self.model.model.visual

    def encode_images(self, processed: dict, compressor: VisualReduction | None,
                      tokens: int | None) -> list[ImageTokens]:
        grid = processed["image_grid_thw"].to(self.device)
        pixels = processed["pixel_values"].to(self.device, self.visual.dtype)
        need = compressor is not None and compressor.needs_attention
        captured: dict[str, Any] = {}

        def grab(module, args, kwargs):
            captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
            captured["cu_seqlens"] = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
            captured["rope"] = kwargs.get("position_embeddings")

        def grab_qkv(module, args, output):  # the block's own projection, not recomputed
            captured["qkv"] = output

        attn = self.visual.blocks[-1].attn
        handles = [attn.register_forward_pre_hook(grab, with_kwargs=True),
                   attn.qkv.register_forward_hook(grab_qkv)] if need else []
        try:
            merged = self.visual(pixels, grid_thw=grid).pooler_output
        finally:
            for handle in handles:
                handle.remove()
        merge = self.visual.spatial_merge_size
        units = (grid.prod(-1) // merge ** 2).tolist()
        pieces = torch.split(merged, units)
        if compressor is None:
            return [ImageTokens(p, p.shape[0], torch.arange(p.shape[0])) for p in pieces]
        scores = keys = None
        if need:
            scores, keys = self._unit_signals(captured, grid)
            scores, keys = torch.split(scores, units), torch.split(keys, units)
        heads = self.visual.blocks[-1].attn.num_heads
        result = []
        for i, piece in enumerate(pieces):
            t, h, w = (int(v) for v in grid[i])
            features = EncoderOutput(
                patch_tokens=piece[None], grid=(t * h // merge, w // merge), num_heads=heads,
                attentions=None if scores is None else scores[i].view(1, 1, 1, -1),
                keys=None if keys is None else keys[i][None])
            k = compressor.budget(piece.shape[0], tokens=tokens) if tokens is not None else compressor.budget(piece.shape[0])
            reduced = compressor.reduce(features, k)
            anchors = reduced.indices[0].clone()
            anchors[anchors < 0] = piece.shape[0] - 1
            result.append(ImageTokens(reduced.tokens[0], piece.shape[0], anchors.cpu()))
        return result

    def _unit_signals(self, captured: dict, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per merged token: mean attention received ``[U]`` and mean pre-rotary keys ``[U, H * Dh]``."""
        attn = self.visual.blocks[-1].attn
        module = importlib.import_module(type(attn).__module__)
        hidden, bounds = captured["hidden"], captured["cu_seqlens"].tolist()
        seq = hidden.shape[0]
        q, k, _ = captured["qkv"].reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        raw_keys = k.reshape(seq, -1)
        cos, sin = captured["rope"]
        q, k = module.apply_rotary_pos_emb_vision(q, k, cos, sin)
        received = torch.zeros(seq, device=hidden.device)
        for start, end in zip(bounds[:-1], bounds[1:]):
            for head in range(attn.num_heads):  # one head at a time: a large image has thousands of patches
                probs = (q[start:end, head].float() @ k[start:end, head].float().T * attn.scaling).softmax(-1)
                received[start:end] += probs.mean(0) / attn.num_heads
        group = self.visual.spatial_merge_size ** 2
        scores = received.view(-1, group).mean(-1)
        keys = raw_keys.float().view(-1, group, raw_keys.shape[-1]).mean(1)
        if hasattr(self.visual, "window_size"):  # Qwen2.5-VL: back from window order to image order
            from transformers.vision_utils import get_vision_window_index

            window_index, _ = get_vision_window_index(grid, spatial_merge_size=self.visual.spatial_merge_size,
                                                      window_size=self.visual.window_size,
                                                      patch_size=self.visual.patch_size)
            order = torch.argsort(window_index)
            scores, keys = scores[order], keys[order]
        return scores, keys

    def positions(self, processed: dict, columns: list[torch.Tensor], attention_mask: torch.Tensor):
        """``[4, B, L]``: text positions (for the mask), then the kept places' M-RoPE positions."""
        kwargs = {k: processed[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in processed}
        full, _ = self.model.model.get_rope_index(processed["input_ids"], attention_mask=processed["attention_mask"],
                                                  **kwargs)
        width = attention_mask.shape[1]
        rope = torch.zeros(3, len(columns), width, dtype=full.dtype)
        for row, cols in enumerate(columns):
            rope[:, row, width - len(cols):] = full[:, row, cols]
        text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return torch.cat([text[None], rope])
