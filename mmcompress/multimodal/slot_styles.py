"""How the ``interleaved`` compressor's slots reach the decoder, chosen once per model from ``config.style``:

- :class:`IcaeSlots`: the slots' last hidden states are the decoder's input embeddings (ICAE);
- :class:`KvSlots`: the slots' per-layer keys/values are the decoder's cache (500xCompressor), the encoder placing
  the slots at prefix positions so the cached keys come out rotated as the decoder reads them;
- :class:`MeanPoolSlots`: no slots; the encoder's own per-layer keys/values averaged over K contiguous groups of
  each chunk are the cache (mean-pooling, :mod:`mmcompress.soft.meanpool`), the form of the shipped text compressor
  ``soft-smollm2-4x``, so a model of this style can start from it.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..results import SoftSegment
from ..soft.base import SoftCompressor
from ..soft.chunking import Chunks
from ..soft.kv import kv_generate, spans_kv
from ..soft.meanpool import pooled_spans
from .models import InterleavedIcaeModel, InterleavedKvModel, InterleavedMeanPoolModel, InterleavedSlotModel


class SlotStyle:
    """The trainable model of the style (what the encoder outputs for the slots, where they sit, how the decoder
    reads them in training), the soft segments it makes, and how the decoder answers from them."""

    name: ClassVar[str] = ""
    model_class: ClassVar[type[InterleavedSlotModel]]

    def check_model(self, llm: Any) -> None:
        """Refuse a backbone this style cannot decode with (before any weight is trained)."""

    def segments(self, encoded: Any, chunks: Chunks, origin_tokens: list[int]) -> list[SoftSegment]:
        """One soft segment per span: its chunks' slots in chunk order."""
        raise NotImplementedError

    def generate(self, compressor: SoftCompressor, soft_prompts: Any, question: Any = None, **kwargs: Any) -> list[str]:
        return SoftCompressor.generate(compressor, soft_prompts, question, **kwargs)


class IcaeSlots(SlotStyle):
    name = "icae"
    model_class = InterleavedIcaeModel

    def segments(self, encoded, chunks, origin_tokens):
        counts = chunks.chunks_per_span()
        per = [x.flatten(0, 1) for x in torch.split(encoded, counts)]
        return [SoftSegment(embeddings=h.detach(), origin_tokens=n, chunks=c)
                for h, n, c in zip(per, origin_tokens, counts)]


class KvSlots(SlotStyle):
    name = "kv"
    model_class = InterleavedKvModel
    spans = staticmethod(spans_kv)  # encoder output -> per span, per layer (keys, values)

    def check_model(self, llm: Any) -> None:
        from ..models.compat import is_rotary

        if not is_rotary(llm):
            raise ConfigError(f"style={self.name!r} needs a model with rotary position embeddings (Llama, Qwen, Mistral...)")

    def segments(self, encoded, chunks, origin_tokens):
        counts = chunks.chunks_per_span()
        return [SoftSegment(kv=tuple((k.detach(), v.detach()) for k, v in kv), origin_tokens=n, chunks=c)
                for kv, n, c in zip(self.spans(encoded, chunks), origin_tokens, counts)]

    def generate(self, compressor, soft_prompts, question=None, **kwargs):
        return kv_generate(compressor, soft_prompts, question, **kwargs)


class MeanPoolSlots(KvSlots):
    name = "meanpool"
    model_class = InterleavedMeanPoolModel
    spans = staticmethod(pooled_spans)  # per-chunk groups (a chunk shorter than K has fewer)


SLOT_STYLES: dict[str, SlotStyle] = {style.name: style for style in (IcaeSlots(), KvSlots(), MeanPoolSlots())}
