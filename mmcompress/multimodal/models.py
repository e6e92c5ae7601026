"""The trainable modules of the ``interleaved`` compressor: the soft encoder with slots (:class:`InterleavedSlotModel`)
and the uncompressed reference (:class:`InterleavedFullModel`), both with the image path."""
from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from ..errors import InvalidPromptError
from ..soft.base import right_pad
from ..soft.chunking import Chunks
from ..soft.encoder import SlotModel
from ..soft.icae import IcaeModel
from ..soft.kv import KvModel
from ..soft.losses import IGNORE, sliced_lm_loss
from .config import InterleavedConfig
from .embedding import scatter_image_tokens


class InterleavedSlotModel(SlotModel):
    """Soft encoder (LoRA + slots) + task markers + the image path; ICAE or KV decoding."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__(llm, config)
        self.style = config.style
        self.encoder_output = "hidden" if config.style == "icae" else "kv"
        self.positions = "standard" if config.style == "icae" else "prefix"
        if image_path is not None:
            self.image_path = image_path  # registered: adapter weights are trainable parameters of this module
        self.slot_schedule = [int(k) for k in (config.slot_schedule or [])]
        self.use_slots = int(config.use_slots) if config.use_slots is not None else None
        self._draw = random.Random(int(config.num_slots))

    def active_slots(self) -> int | None:
        """How many leading slots the decoder reads now: drawn from the schedule in training, ``use_slots`` else."""
        if self.training and self.slot_schedule:
            return self._draw.choice(self.slot_schedule)
        return self.use_slots

    def take_slots(self, encoded, k: int | None):
        """The first ``k`` slots of every chunk (``[N, K, D]`` hidden states or per-layer ``[N, H, K, d]`` KV)."""
        if k is None or k >= self.encoder.num_slots:
            return encoded
        if self.encoder_output == "hidden":
            return encoded[:, :k]
        return [(key[:, :, :k], value[:, :, :k]) for key, value in encoded]

    def embed_chunks(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[N, L, D]``: token embeddings with each image's adapter output scattered into its positions."""
        embeds = self.encoder.embed(batch["chunk_ids"])
        if "pixels" in batch:
            feats = self.images(batch["pixels"])
            embeds = scatter_image_tokens(embeds, batch["chunk_image"], feats.flatten(0, 1), feats.shape[1])
        return embeds

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.get_image_path()(pixels)

    def get_image_path(self):
        path = getattr(self, "image_path", None) or getattr(self, "_llava_path", None)
        if path is None:
            raise InvalidPromptError("this compressor has no image path")
        return path

    def compress_embedded(self, batch: dict[str, Any]):
        chunks = self.chunks_from_batch(batch)
        encoded = self.encoder.encode_embeds(self.embed_chunks(batch), batch["chunk_mask"], batch["chunk_index"],
                                             output=self.encoder_output, positions=self.positions)
        return self.take_slots(encoded, self.active_slots()), chunks

    def decoder_hidden(self, encoded, chunks: Chunks, batch: dict[str, Any]):
        model = IcaeModel if self.style == "icae" else KvModel
        return model.decoder_hidden(self, encoded, chunks, batch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        encoded, chunks = self.compress_embedded(batch)
        hidden, labels = self.decoder_hidden(encoded, chunks, batch)
        loss, accuracy = sliced_lm_loss(hidden, labels, self.encoder.lm_head)
        return {"loss": loss, "token_accuracy": accuracy}


class InterleavedFullModel(nn.Module):
    """The uncompressed reference: the LLM reads the embedded sequence itself; the image path trains, and with
    ``tune_decoder`` a LoRA adapter on the LLM too (the base weights stay frozen)."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__()
        llm.requires_grad_(False)
        object.__setattr__(self, "_llm", llm)  # frozen and not saved: held by reference
        if config.tune_decoder:
            from ..models.lora import add_lora

            # registered, so the trainer optimises and checkpoints the LoRA tensors (only they require grad)
            self.decoder_lora = add_lora(llm, config)
        if image_path is not None:
            self.image_path = image_path

    @property
    def llm(self) -> nn.Module:
        return self._llm

    def get_image_path(self):
        path = getattr(self, "image_path", None) or getattr(self, "_llava_path", None)
        if path is None:
            raise InvalidPromptError("this compressor has no image path")
        return path

    def embed_chunks(self, batch: dict[str, Any]) -> torch.Tensor:
        embeds = self._llm.get_input_embeddings()(batch["chunk_ids"])
        if "pixels" in batch:
            feats = self.get_image_path()(batch["pixels"])
            embeds = scatter_image_tokens(embeds, batch["chunk_image"], feats.flatten(0, 1), feats.shape[1])
        return embeds

    def forward(self, **batch: Any):
        return self.training_step(batch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        context = self.embed_chunks(batch)  # one left-padded row per example
        tails = self._llm.get_input_embeddings()(batch["tail_ids"])
        rows, masks, labels = [], [], []
        for b in range(context.shape[0]):
            keep = batch["chunk_mask"][b].bool()
            rows.append(torch.cat([context[b][keep], tails[b]], 0))
            masks.append(torch.cat([batch["tail_mask"].new_ones(int(keep.sum())), batch["tail_mask"][b]]))
            labels.append(torch.cat([batch["labels"].new_full((int(keep.sum()),), IGNORE), batch["labels"][b]]))
        inputs, _ = right_pad(rows)
        mask, _ = right_pad(masks, 0)
        labels, _ = right_pad(labels, IGNORE)
        backbone = getattr(self._llm, self._llm.base_model_prefix)
        out = backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        loss, accuracy = sliced_lm_loss(out.last_hidden_state, labels, self._llm.get_output_embeddings())
        return {"loss": loss, "token_accuracy": accuracy}

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.training_step(batch).items()}
