"""Idefics3 and SmolVLM: image splitting into tiles plus a global view, a SigLIP-style tower, pixel shuffle.

The reduction runs per tile *after* the connector (pixel shuffle + projection): the shuffle folds each
``scale x scale`` block of patches into one token and needs whole blocks, so reducing before it would have to drop
whole blocks anyway. An image's K tokens are shared by its tiles (:func:`split_budget_over_tiles`); a tile's kept
tokens stay in its own placeholder run, next to its ``<row_i_col_j>`` / ``<global-img>`` marker. Signals per
shuffled token, from the tower's last layer: the mean attention each patch receives (heads and queries averaged,
padded patches masked; no CLS) and the keys, averaged over the patches the shuffle puts into the token (found by
shuffling patch indices through the model's own ``pixel_shuffle``). With no reduction the model's own
``get_image_features`` runs.
"""
from __future__ import annotations

import torch

from ..encoders.base import EncoderOutput
from ..reduction.base import VisualReduction
from .base import ImageTokens, VLMRunner, split_budget_over_tiles


class Idefics3Runner(VLMRunner):
    """``Idefics3ForConditionalGeneration`` and ``SmolVLMForConditionalGeneration``."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def nest(self, loaded: list, images: list[list]):
        """Idefics3 / SmolVLM processors take the images of each prompt as a list of their own."""
        out, start = [], 0
        for row in images:
            out.append(loaded[start:start + len(row)])
            start += len(row)
        return out

    def tile_counts(self, processed: dict) -> list[int]:
        """Tiles of each image, read from the placeholder runs: an image ends with its ``<global-img>`` run."""
        tokenizer = self.tokenizer
        global_id = tokenizer.convert_tokens_to_ids("<global-img>")
        counts = []
        for ids, mask in zip(processed["input_ids"], processed["attention_mask"]):
            ids = ids[mask.bool()]
            place = ids == self.image_token_id
            starts = (place & ~torch.cat([torch.tensor([False]), place[:-1]])).nonzero().squeeze(1).tolist()
            tiles = 0
            for start in starts:
                tiles += 1
                if start > 0 and int(ids[start - 1]) == global_id:
                    counts.append(tiles)
                    tiles = 0
        return counts

    def encode_images(self, processed: dict, compressor: VisualReduction | None,
                      tokens: int | None) -> list[ImageTokens]:
        inner = self.model.model
        seq = self.processor.image_seq_len
        tiles = self.tile_counts(processed)
        pixels = processed["pixel_values"].to(self.device, inner.dtype)
        if compressor is None:
            rows = inner.get_image_features(pixels, processed.get("pixel_attention_mask"), return_dict=True)
            flat = torch.cat(list(rows.pooler_output))
            return [ImageTokens(f, f.shape[0]) for f in torch.split(flat, [t * seq for t in tiles])]
        pixels, patch_mask = self._real_tiles(processed, pixels)
        layer = inner.vision_model.encoder.layers[-1].self_attn
        captured = {}
        handle = layer.register_forward_pre_hook(
            lambda m, a, kw: captured.update(h=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True)
        try:
            hidden = inner.vision_model(pixel_values=pixels, patch_attention_mask=patch_mask).last_hidden_state
        finally:
            handle.remove()
        shuffled = inner.connector(hidden)  # [tiles, seq, D]
        scores = keys = None
        if compressor.needs_attention:
            scores, keys = self._token_signals(layer, captured["h"], patch_mask.flatten(1))
        result, row = [], 0
        for count in tiles:
            k = compressor.budget(seq * count, tokens=tokens) if tokens is not None else compressor.budget(seq * count)
            parts, anchors = [], []
            for tile, share in enumerate(split_budget_over_tiles(k, count)):
                if not share:
                    continue
                t = row + tile
                features = EncoderOutput(
                    patch_tokens=shuffled[t:t + 1], num_heads=layer.num_heads,
                    attentions=None if scores is None else scores[t].view(1, 1, 1, -1),
                    keys=None if keys is None else keys[t:t + 1])
                reduced = compressor.reduce(features, share)
                parts.append(reduced.tokens[0])
                anchors.append(tile * seq + torch.arange(reduced.k).clamp(max=seq - 1))
            row += count
            result.append(ImageTokens(torch.cat(parts), seq * count, torch.cat(anchors)))
        return result

    def _real_tiles(self, processed: dict, pixels: torch.Tensor):
        """The non-padding tiles and their patch masks, as the model's ``get_image_features`` selects them."""
        b, n = pixels.shape[:2]
        pixels = pixels.view(b * n, *pixels.shape[2:])
        real = (pixels == 0.0).sum(dim=(-1, -2, -3)) != pixels.shape[1:].numel()
        pixels = pixels[real]
        mask = processed.get("pixel_attention_mask")
        if mask is None:
            mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        else:
            mask = mask.view(b * n, *mask.shape[2:]).to(pixels.device)[real]
        patch = self.model.config.vision_config.patch_size
        blocks = mask.unfold(1, patch, patch).unfold(2, patch, patch)
        return pixels, blocks.sum(dim=(-1, -2)) > 0

    def _token_signals(self, layer, hidden: torch.Tensor, patch_mask: torch.Tensor):
        """Per shuffled token: mean attention received ``[tiles, seq]`` and mean keys ``[tiles, seq, Dk]``."""
        from einops import rearrange

        q = rearrange(layer.q_proj(hidden), "b l (h d) -> b h l d", h=layer.num_heads)
        k_flat = layer.k_proj(hidden)
        k = rearrange(k_flat, "b l (h d) -> b h l d", h=layer.num_heads)
        received = torch.zeros(hidden.shape[:2], device=hidden.device)  # [tiles, patches]
        for head in range(layer.num_heads):  # one head at a time: a tile has about a thousand patches
            logits = (q[:, head] @ k[:, head].transpose(-1, -2)).float() * layer.scale
            logits = logits.masked_fill(~patch_mask[:, None, :], float("-inf"))
            received += logits.softmax(-1).mean(1) / layer.num_heads
        connector = self.model.model.connector
        index = torch.arange(hidden.shape[1], dtype=torch.float32, device=hidden.device).view(1, -1, 1)
        groups = connector.pixel_shuffle(index, connector.scale_factor)[0].long()  # [seq, scale^2] patch indices
        scores = received[:, groups].mean(-1)
        keys = k_flat.float()[:, groups].mean(2)
        return scores, keys
