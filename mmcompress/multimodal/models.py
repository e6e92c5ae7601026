"""The trainable modules of the ``interleaved`` compressor: the soft encoder with slots (:class:`InterleavedSlotModel`)
and the uncompressed reference (:class:`InterleavedFullModel`), both with the image path."""
from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from ..errors import InvalidPromptError
from ..soft.base import right_pad
from ..soft.encoder import SlotModel
from ..soft.icae import IcaeModel
from ..soft.kv import KvModel
from ..soft.meanpool import MeanPoolModel
from ..soft.losses import IGNORE, LM_LOSSES, chunked_lm_loss
from .config import InterleavedConfig
from .embedding import scatter_image_tokens


class ImagePathEmbedding:
    """What both interleaved models share: the image path (the encoder + adapter, or LLaVA's tower + projector) and
    the embedding of a chunk batch, token embeddings with each image's adapter output in its positions."""

    def token_embeddings(self) -> nn.Module:
        raise NotImplementedError

    def get_image_path(self):
        path = getattr(self, "image_path", None) or getattr(self, "_llava_path", None)
        if path is None:
            raise InvalidPromptError("this compressor has no image path")
        return path

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.get_image_path()(pixels)

    def embed_chunks(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[N, L, D]``: token embeddings with each image's adapter output scattered into its positions."""
        embeds = self.token_embeddings()(batch["chunk_ids"])
        if "pixels" in batch:
            feats = self.images(batch["pixels"])
            embeds = scatter_image_tokens(embeds, batch["chunk_image"], feats.flatten(0, 1), feats.shape[1])
        return embeds


class InterleavedSlotModel(ImagePathEmbedding, SlotModel):
    """Soft encoder (LoRA + slots) + task markers + the image path. What the slots are and how the decoder reads them
    in training come from the slot style's model by inheritance: :class:`InterleavedIcaeModel`,
    :class:`InterleavedKvModel`."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__(llm, config)
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
        return self.first_slots(encoded, k)

    def first_slots(self, encoded, k: int):
        raise NotImplementedError

    def token_embeddings(self) -> nn.Module:
        return self.encoder.llm.get_input_embeddings()

    def compress_embedded(self, batch: dict[str, Any]):
        chunks = self.chunks_from_batch(batch)
        encoded = self.encoder.encode_embeds(self.embed_chunks(batch), batch["chunk_mask"], batch["chunk_index"],
                                             output=self.encoder_output, positions=self.positions)
        return self.take_slots(encoded, self.active_slots()), chunks

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        encoded, chunks = self.compress_embedded(batch)
        hidden, labels = self.decoder_hidden(encoded, chunks, batch)
        loss, accuracy = LM_LOSSES[self.lm_loss](hidden, labels, self.encoder.lm_head)
        return {"loss": loss, "token_accuracy": accuracy}


class InterleavedIcaeModel(InterleavedSlotModel, IcaeModel):
    """ICAE style: the slots' last hidden states ``[N, K, D]`` are the decoder's input embeddings."""

    def first_slots(self, encoded: torch.Tensor, k: int) -> torch.Tensor:
        return encoded[:, :k]


class InterleavedKvModel(InterleavedSlotModel, KvModel):
    """KV style (500xCompressor): the slots' per-layer keys/values ``[N, H, K, d]`` are the decoder's cache."""

    def first_slots(self, encoded, k: int):
        return [(key[:, :, :k], value[:, :, :k]) for key, value in encoded]


class InterleavedMeanPoolModel(InterleavedSlotModel, MeanPoolModel):
    """Mean-pooling style: the encoder's per-layer keys/values over each chunk's K contiguous near-equal groups of
    positions (text tokens and adapter tokens alike) are the decoder's cache. No slots: soft token ``g`` is the
    average of the ``g``-th stretch of the chunk, so the soft tokens keep the prompt's order (which image came
    second). K is the number of groups (the encoder's grouped positions depend on it), so one model trained with a
    ``slot_schedule`` serves every K in ``[1, num_slots]``; unlike nested slots, a K = 4 read is not a prefix of 16."""

    def __init__(self, llm: nn.Module, config: InterleavedConfig, image_path: nn.Module | None):
        super().__init__(llm, config, image_path)
        self.max_groups = int(config.num_slots)

    def compress_embedded(self, batch: dict[str, Any]):
        chunks = self.chunks_from_batch(batch)
        groups = self.active_slots() or self.max_groups
        return self.pool_embeds(self.embed_chunks(batch), chunks, groups=groups), chunks


class InterleavedFullModel(ImagePathEmbedding, nn.Module):
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

    def token_embeddings(self) -> nn.Module:
        return self._llm.get_input_embeddings()

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
        loss, accuracy = chunked_lm_loss(out.last_hidden_state, labels, self._llm.get_output_embeddings())
        return {"loss": loss, "token_accuracy": accuracy}

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.training_step(batch).items()}
