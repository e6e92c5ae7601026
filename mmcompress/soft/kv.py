"""500xCompressor (Li, Su, Collier, ACL 2025; ZongqianLi/500xCompressor): the soft prompt is the memory slots'
**keys and values at every layer**, handed to the frozen decoder as its cache.

Same encoder, chunking, markers and objectives as :mod:`.icae`; what differs is what crosses from encoder to
decoder:

============  ==================================================  ==============================================
              icae                                                kv
============  ==================================================  ==============================================
soft prompt   K last-layer hidden states ``[K, D]``               K keys + values per layer ``L x 2 x [H, K, d]``
decoder gets  them as ``inputs_embeds`` (enters at layer 0)       them as a cache prefix (enters at every layer)
storage       K x D numbers                                       2 x L x K x H_kv x d numbers (30x more for
                                                                  SmolLM2-135M: 30 layers, 3 KV heads of 64)
decoder cost  reads K extra positions through every layer         no compute for the K positions (attention only)
positions     soft tokens take positions 0..K-1 like text        cached keys are rotated as positions 0..K-1
============  ==================================================  ==============================================

Defaults follow 500xCompressor's code (:class:`KvConfig`): every chunk right-padded with EOS to ``chunk_tokens``
(attended), the slots at the positions after that text, BOS before regeneration and nothing before a question.
mmcompress's own variant (``slot_positions: prefix``) makes positions exact: the encoder places slot ``j`` of chunk
``c`` at position ``c*K + j`` (shifting the chunk's text to negative positions, which rotary attention does not
notice), so the cache is what a decoder would have built for ``n*K`` prefix tokens; in both the decoder continues at
``n*K``. When kept text precedes a soft span in a mixed prompt, the span's keys are re-rotated by that text's length
(:func:`shift_rotary_keys`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange

from ..errors import ConfigError, InvalidPromptError
from ..models.compat import cache_kwargs, new_cache, output_cache
from ..models.decoding import extend_context
from ..models.rotary import shift_rotary_keys
from ..registry import register_compressor
from ..results import SoftSegment
from .base import DecoderCache, SoftCompressor, _as_batch, _per_item, left_pad
from .chunking import Chunks, span_layouts
from .encoder import EncoderCompressor, EncoderConfig, SlotModel
from .gist import stack_row_caches


@dataclass
class KvConfig(EncoderConfig):
    """500xCompressor settings: see :class:`~mmcompress.soft.encoder.EncoderConfig`.

    Defaults follow 500xCompressor's code (ZongqianLi/500xCompressor ``demo/L3LoraL3.py``, ``train_500xCompressor.py``):
    every chunk is right-padded with EOS to ``chunk_tokens`` (its ``context_len``) and the padding is attended
    (``pad_to: chunk_tokens``); the slots keep their positions after that text (``slot_positions: after_text``);
    the decoder reads BOS before regenerating and nothing before a question (``marker_ids: 500x``), the question
    as ``"Question: {question} Answer: "``.

    ``slot_positions``: "after_text" (500xCompressor: slot ``j`` of chunk ``c`` at ``pad_to + c*K + j``, or after
    the chunk's own length when unpadded, while the decoder continues at ``n*K``) or "prefix" (mmcompress: slot ``j``
    of chunk ``c`` at ``c*K + j``, exactly where the decoder reads its cache).

    mmcompress's own variant, options (``MMCOMPRESS_VARIANT``; the shipped recipes configs/soft/kv-4x.yaml and
    configs/train/kv-pretrain.yaml set them): ``pad_to: 0`` (left padding, masked: attended padding changes the slots
    with the padding length and costs encoder compute), ``slot_positions: prefix`` (exact relative positions
    between the cache and the decoder), ``marker_ids: null`` (learned [AE]/[LM]/[FT] markers, one per task, also for
    continuation, which 500xCompressor does not train) and ``qa_template: "Question: {question}\nAnswer:"``.
    """

    pad_to: int | str = "chunk_tokens"
    marker_ids: Any = "500x"
    qa_template: str = "Question: {question} Answer: "
    slot_positions: str = "after_text"
    MMCOMPRESS_VARIANT: ClassVar[dict[str, Any]] = {"pad_to": 0, "slot_positions": "prefix", "marker_ids": None,
                                                    "qa_template": "Question: {question}\nAnswer:"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.slot_positions not in ("prefix", "after_text"):
            raise ConfigError(f"slot_positions must be 'prefix' or 'after_text', got {self.slot_positions!r}")


def spans_kv(layers: list[tuple[torch.Tensor, torch.Tensor]], chunks: Chunks):
    """Per-layer ``[N, H, K, d]`` chunk KV -> per span, per layer ``([H, n_s*K, d], [H, n_s*K, d])``."""
    counts = chunks.chunks_per_span()
    out = [[] for _ in counts]
    for keys, values in layers:
        for s, (k, v) in enumerate(zip(torch.split(keys, counts), torch.split(values, counts))):
            out[s].append((rearrange(k, "n h k d -> h (n k) d"), rearrange(v, "n h k d -> h (n k) d")))
    return out


def build_cache(model: Any, per_item: list[list[tuple[torch.Tensor, torch.Tensor]]]):
    """A DynamicCache from per-item, per-layer ``[H, C_b, d]`` KV, left-padded to ``C_max``; and its mask ``[B, C]``."""
    lengths = [item[0][0].shape[-2] for item in per_item]
    width = max(lengths)
    cache = new_cache(model)
    for layer in range(len(per_item[0])):
        ks, vs = [], []
        for item, n in zip(per_item, lengths):
            k, v = item[layer]
            pad = width - n
            ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        cache.update(torch.stack(ks), torch.stack(vs), layer)
    ref = per_item[0][0][0]
    mask = torch.zeros(len(per_item), width, dtype=torch.long, device=ref.device)
    for b, n in enumerate(lengths):
        mask[b, width - n:] = 1
    return cache, mask, torch.tensor(lengths, device=ref.device)


def kv_segments(per_span, chunks: Chunks, soft_counts: list[int], texts) -> list[SoftSegment]:
    """Per-span, per-layer KV -> SoftSegments with their chunk layout (``soft_counts``: positions of each chunk)."""
    return [SoftSegment(kv=tuple((k.detach(), v.detach()) for k, v in item), origin_tokens=n, chunks=c, text=t,
                        chunk_layout=layout)
            for item, n, c, t, layout in zip(per_span, chunks.lengths, chunks.chunks_per_span(), texts,
                                             span_layouts(chunks, soft_counts))]


class KvModel(SlotModel):
    """Slots' per-layer keys/values -> the decoder's cache; the decoder reads marker + tail after it."""

    encoder_output = "kv"
    positions = "prefix"

    def __init__(self, llm, config: KvConfig):
        super().__init__(llm, config)
        # configs of the methods built on this model (meanpool, interleaved) keep their class's positions
        self.positions = getattr(config, "slot_positions", type(self).positions)

    def per_span(self, encoded, chunks: Chunks) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """What :meth:`compress_chunks` returned -> per span, per layer ``(keys, values)`` ``[H, C, d]``."""
        return spans_kv(encoded, chunks)

    def decoder_hidden(self, encoded, chunks: Chunks, batch: dict[str, Any]):
        per_item = self.per_span(encoded, chunks)
        cache, cache_mask, lengths = build_cache(self.encoder.llm, per_item)
        tails = torch.cat([self.marker_embeddings(batch["task"]), self.encoder.embed(batch["tail_ids"])], 1)
        marker_mask = batch["tail_mask"][:, :1].new_ones(len(per_item), 1)
        fixed = batch.get("fixed_marker")  # fixed marker tokens already start the tail: the learned one is masked
        if fixed is not None:
            marker_mask = marker_mask * (~fixed.to(marker_mask.device))[:, None].long()
        tail_mask = torch.cat([marker_mask, batch["tail_mask"]], 1)
        mask = torch.cat([cache_mask, tail_mask], 1)
        position_ids = lengths[:, None] + (tail_mask.cumsum(1) - 1).clamp(min=0)
        backbone = self.encoder.backbone
        with self.encoder.decoder():
            out = backbone(inputs_embeds=tails, attention_mask=mask, position_ids=position_ids, use_cache=True,
                           **cache_kwargs(backbone, cache))
        labels = torch.cat([batch["labels"][:, :1].new_full((len(per_item), 1), -100), batch["labels"]], 1)
        if fixed is not None:  # a masked marker predicts nothing (a tail without fixed tokens starts unpredicted)
            labels[:, 1] = torch.where(fixed.to(labels.device), torch.full_like(labels[:, 1], -100), labels[:, 1])
        return out.last_hidden_state, labels


@register_compressor("kv")
class KvCompressor(EncoderCompressor, SoftCompressor):
    """500xCompressor: ``num_slots`` cached keys/values per layer per chunk of ``chunk_tokens``."""

    config_class = KvConfig
    module_class = KvModel

    def build_module(self):
        from ..models.compat import is_rotary

        if not is_rotary(self.llm):
            raise ConfigError("the kv method needs a model with rotary position embeddings (Llama, Qwen, Mistral...)")
        return super().build_module()

    def encode_spans(self, texts):
        outs, chunks = self.encode_chunks(texts)
        layers = [(torch.cat([o[i][0] for o in outs]), torch.cat([o[i][1] for o in outs])) for i in range(len(outs[0]))]
        keys = layers[0][0]
        return kv_segments(spans_kv(layers, chunks), chunks, [keys.shape[2]] * keys.shape[0], texts)

    # ------------------------------------------------------------------------------------------------ decode
    def prefix_kv(self, pieces) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return kv_prefix(self, pieces)

    def decoder_cache(self, pieces, task: str = "qa") -> DecoderCache:
        """One prompt as :meth:`generate` reads it: the KV of its pieces up to the last soft span, then the marker of
        ``task`` read after them; the kept text after the span is returned to follow."""
        head, tail = self.split_pieces(pieces, task, None)
        with torch.no_grad():
            layers = self.prefix_kv(head)
            context = stack_row_caches(self.llm, [(layers, layers[0][0].shape[-2])])
            marker = self.marker(task)
            if marker.shape[0]:  # fixed markers may be none (500xCompressor reads the question right after the KV)
                with self.decoder_mode():
                    context = extend_context(self.llm, context, marker[None].to(self.device, self.llm.dtype))
        return DecoderCache(self.llm, context, "".join(tail), self.decoder_mode)

    def generate(self, soft_prompts, question=None, *, task: str = "qa", max_new_tokens=None, **generate_kwargs):
        return kv_generate(self, soft_prompts, question, task=task, max_new_tokens=max_new_tokens, **generate_kwargs)

    def next_token_logits(self, soft_prompts, question=None, *, task: str = "qa"):
        return kv_next_token_logits(self, soft_prompts, question, task=task)


def kv_prefix(compressor: Any, pieces) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One prompt's decoder cache, per layer ``[H, C, d]``: soft spans' KV re-rotated to their place, kept text run
    through the decoder after what precedes it (``compressor``: any soft compressor whose slots are KV)."""
    backbone = compressor.module.encoder.backbone
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    length = 0
    for k, piece in enumerate(pieces):
        if isinstance(piece, SoftSegment):
            if piece.kv is None:
                raise ConfigError(f"{compressor.name} got an embedding soft segment; use the method that made it")
            new = [(shift_rotary_keys(key.to(compressor.device), length, backbone, i), val.to(compressor.device))
                   for i, (key, val) in enumerate(piece.kv)]
            count = piece.num_tokens
        else:
            sep = (piece.sep if piece.sep is not None else "\n\n") if k else ""
            embeds = compressor.embed_text(sep + piece.text)[None]
            if embeds.shape[1] == 0:
                continue
            cache = new_cache(compressor.llm)
            if layers is not None:
                for i, (key, val) in enumerate(layers):
                    cache.update(key[None], val[None], i)
            positions = torch.arange(length, length + embeds.shape[1], device=compressor.device)[None]
            with compressor.decoder_mode():
                out = backbone(inputs_embeds=embeds, position_ids=positions, use_cache=True,
                               **cache_kwargs(backbone, cache))
            cache = output_cache(out) or cache
            count = embeds.shape[1]
            new = [(layer.keys[0, :, -count:], layer.values[0, :, -count:]) for layer in cache.layers]
        layers = new if layers is None else [(torch.cat([a, c], -2), torch.cat([b, d], -2))
                                             for (a, b), (c, d) in zip(layers, new)]
        length += count
    if layers is None:  # nothing before the marker: an empty cache
        cfg = compressor.llm.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        empty = torch.zeros(heads, 0, dim, device=compressor.device, dtype=compressor.llm.dtype)
        layers = [(empty, empty) for _ in range(cfg.num_hidden_layers)]
    return layers

def kv_decoder_batch(compressor: Any, soft_prompts, question=None, task: str = "qa"):
    """Each prompt's KV as one left-padded decoder cache, and the marker + tail after it:
    ``(cache, cache_mask [B, C], tail [B, T, D], tail_mask [B, T])``; None when no prompt has a soft span."""
    soft = _as_batch(soft_prompts)
    questions = _per_item(question, len(soft))
    prefixes, tails = [], []
    for item, q in zip(soft.items, questions):
        head, tail = compressor.split_pieces(item, task, q)
        prefixes.append(kv_prefix(compressor, head))
        parts = [compressor.marker(task).to(compressor.device, compressor.llm.dtype)]
        if tail:
            parts.append(compressor.embed_text("".join(tail)))
        tails.append(torch.cat(parts, 0))
    if all(p[0][0].shape[-2] == 0 for p in prefixes):  # no soft span anywhere: plain text generation
        return None
    if any(t.shape[0] == 0 for t in tails):
        raise InvalidPromptError(f"{compressor.name} has nothing to decode after the soft prompt for task {task!r} "
                                 "(its fixed markers, 500xCompressor's, put nothing there): pass a question, or use learned "
                                 "markers (marker_ids: null)")
    cache, cache_mask, _ = build_cache(compressor.llm, prefixes)
    tail, tail_mask = left_pad(tails)
    return cache, cache_mask, tail, tail_mask


def kv_generate(compressor: Any, soft_prompts, question=None, *, task: str = "qa", max_new_tokens=None,
                **generate_kwargs) -> list[str]:
    """Batched generation with each prompt's KV as the decoder cache (left-padded, positions per prompt); used by
    every soft compressor whose slots are KV (:class:`KvCompressor`, the interleaved compressor's KV style)."""
    with torch.no_grad():
        batch = kv_decoder_batch(compressor, soft_prompts, question, task)
        if batch is None:
            return SoftCompressor.generate(compressor, soft_prompts, question, task=task,
                                           max_new_tokens=max_new_tokens, **generate_kwargs)
        cache, cache_mask, tail, tail_mask = batch
        # generate() expects inputs to span the cached positions too; they are skipped, so zeros do
        inputs = torch.cat([tail.new_zeros(tail.shape[0], cache_mask.shape[1], tail.shape[-1]), tail], 1)
        mask = torch.cat([cache_mask, tail_mask], 1)
        kwargs = compressor._generate_defaults(max_new_tokens)
        kwargs.update(generate_kwargs)
        with compressor.decoder_mode():
            out = compressor.llm.generate(inputs_embeds=inputs, attention_mask=mask,
                                          **cache_kwargs(compressor.llm, cache), **kwargs)
    return compressor.tokenizer.batch_decode(out, skip_special_tokens=True)


def kv_next_token_logits(compressor: Any, soft_prompts, question=None, *, task: str = "qa") -> torch.Tensor:
    """``[B, V]`` float32 logits of the first token :func:`kv_generate` would pick from."""
    with torch.no_grad():
        batch = kv_decoder_batch(compressor, soft_prompts, question, task)
        if batch is None:
            return SoftCompressor.next_token_logits(compressor, soft_prompts, question, task=task)
        cache, cache_mask, tail, tail_mask = batch
        mask = torch.cat([cache_mask, tail_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cache_mask.shape[1]:]
        with compressor.decoder_mode():
            out = compressor.llm(inputs_embeds=tail, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **cache_kwargs(compressor.llm, cache))
    return out.logits[:, -1].float()
