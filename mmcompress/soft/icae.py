"""ICAE, the In-context Autoencoder (Ge et al., ICLR 2024; getao/icae).

The encoder (base LLM + LoRA) reads each chunk followed by ``K`` memory slots; the slots' **last hidden states** are
the soft prompt. The decoder (the same LLM, adapter off) reads them as ``inputs_embeds``, then a learned task marker
([AE] regenerate, [LM] continue, [FT]/"qa" answer), then the text that follows. Long inputs are split into chunks of
at most ``chunk_tokens`` and their slots concatenated (v2's multi-span scheme), all chunks in one encoder batch.

Compared with :mod:`.kv` (500xCompressor): ICAE hands the decoder K *input vectors*, so everything the decoder gets
must pass through its first layer; the KV method hands it K keys/values at *every* layer.

    from mmcompress import create_compressor
    icae = create_compressor("icae", model="smollm2-135m", num_slots=32, chunk_tokens=128)
    soft = icae.compress(["a long document ..."], question="What ...?")   # documents soft, question kept as text
    icae.generate(soft)                                                     # -> ["answer"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..registry import register_compressor
from ..results import SoftSegment
from .base import SoftCompressor, right_pad
from .chunking import Chunks, gather_spans, span_layouts
from .encoder import EncoderCompressor, EncoderConfig, SlotModel


@dataclass
class IcaeConfig(EncoderConfig):
    """ICAE settings: see :class:`~mmcompress.soft.encoder.EncoderConfig` (``num_slots`` per ``chunk_tokens``).

    Defaults follow ICAE v2's code (getao/icae ``code/icae_v2/modeling_icae_multi_span.py``): the text is tokenized
    with its BOS before it is cut into chunks (``encoder_bos``), and a question follows the [FT] marker as it is
    (``qa_template="{question}"``). mmcompress's own variant, an option: ``encoder_bos: false`` (the BOS takes a
    place in the first chunk's input, which at ``chunk_tokens`` = the training window pushes a window into a second
    chunk) and ``qa_template: "Question: {question}\nAnswer:"`` (the layout of mmcompress's QA data); the shipped
    recipes (configs/soft/icae-4x.yaml, configs/train/icae-pretrain.yaml) set both.

    ``decoder_prefix_ids`` / ``decoder_suffix_ids``: token ids the decoder reads before everything else and after
    the question in the "qa" task (the fine-tuned ICAE v2 wraps its [FT] prompt in Mistral's ``<s>[INST] ...
    [/INST]``; regeneration reads ``[slots] [AE]`` as the pretrained model does); None: nothing. Not a method
    default: the template belongs to the base model (the published loader sets Mistral's for the fine-tuned file).
    """

    encoder_bos: bool = True
    qa_template: str = "{question}"
    decoder_prefix_ids: Any = None
    decoder_suffix_ids: Any = None
    MMCOMPRESS_VARIANT: ClassVar[dict[str, Any]] = {"encoder_bos": False,
                                                    "qa_template": "Question: {question}\nAnswer:"}


class IcaeModel(SlotModel):
    """Slots' last hidden states -> decoder ``inputs_embeds`` (then marker, then the tail text)."""

    encoder_output = "hidden"
    positions = "standard"

    def decoder_hidden(self, encoded: torch.Tensor, chunks: Chunks, batch: dict[str, Any]):
        soft = gather_spans(encoded, chunks)  # per example [n_b * K, D]
        markers = self.marker_embeddings(batch["task"])
        tails = self.encoder.embed(batch["tail_ids"])
        fixed = batch.get("fixed_marker")  # fixed marker tokens already start the tail: no learned marker
        rows, masks, labels = [], [], []
        for b, s in enumerate(soft):
            head_parts = [s] if fixed is not None and bool(fixed[b]) else [s, markers[b]]
            rows.append(torch.cat([*head_parts, tails[b]], 0))
            head = sum(h.shape[0] for h in head_parts)
            masks.append(torch.cat([batch["tail_mask"].new_ones(head), batch["tail_mask"][b]]))
            labels.append(torch.cat([batch["labels"].new_full((head,), -100), batch["labels"][b]]))
        inputs, _ = right_pad(rows)
        mask, _ = right_pad(masks, 0)
        labels, _ = right_pad(labels, -100)
        with self.encoder.decoder():
            out = self.encoder.backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        return out.last_hidden_state, labels


@register_compressor("icae")
class Icae(EncoderCompressor, SoftCompressor):
    """ICAE: a prompt's compressible text becomes ``num_slots`` soft embeddings per chunk of ``chunk_tokens``."""

    config_class = IcaeConfig
    module_class = IcaeModel

    def decoder_embeddings(self, pieces, task: str, question: str | None):
        middle = super().decoder_embeddings(pieces, task, question)
        if task != "qa":
            return middle
        parts = [self.embed_ids(self.config.decoder_prefix_ids), middle, self.embed_ids(self.config.decoder_suffix_ids)]
        return torch.cat(parts, 0)

    def encode_spans(self, texts):
        outs, chunks = self.encode_chunks(texts)
        hidden = torch.cat(outs, 0)
        layouts = span_layouts(chunks, [hidden.shape[1]] * hidden.shape[0])
        return [SoftSegment(embeddings=h.detach(), origin_tokens=n, chunks=c, text=t, chunk_layout=lay)
                for h, n, c, t, lay in zip(gather_spans(hidden, chunks), chunks.lengths, chunks.chunks_per_span(), texts,
                                           layouts)]
