"""Mean-pooling compression (Feldman & Artzi, "Simple Context Compression: Mean-Pooling and Multi-Ratio Training",
2025): the soft prompt is the encoder's own keys and values at every layer, **averaged over each group of
``pool_ratio`` consecutive tokens**, handed to the frozen decoder as its cache (as :mod:`.kv` does with memory slots).

No memory slots are appended: each group of ``r`` tokens becomes one cache position, so a chunk of ``L`` tokens
becomes ``ceil(L / r)`` positions and the ratio is ``r`` by construction. The paper finds pooling beats learned
compression tokens at several scales and trains more stably; it also starts from something useful - before any
training, the pooled cache already holds a blurred copy of the text the decoder can read.

Positions (``positions: grouped``, the default). Cached keys are stored after the rotary embedding, and averaging
keys rotated to four different positions would blur their phase. So the encoder places all tokens of group ``g``
at the *same* position ``g`` (the causal mask still orders them), the averaged key is rotated exactly as a cache
entry at position ``g``, and the decoder continues at ``ceil(L / r)`` - the same layout as :mod:`.kv`. With
``positions: standard`` tokens keep ``0..L-1`` and the pooled keys mix phases (the paper's encoder-output pooling
has no such issue because it pools hidden states, not rotated keys); it is kept as the ablation.

Question-aware (``question_aware: true``, off by default; query-guided compression, the soft counterpart of
LongLLMLingua's question-conditioned ranking): the encoder reads the prompt's question before each chunk, so each
chunk's keys and values are computed knowing what will be asked. Only the chunk's own tokens are pooled (the soft
prompt keeps its size and ratio); the question sits at the positions just before the chunk's first group. The
question must then be given when compressing, and the soft prompt serves that question.

    from mmcompress import create_compressor
    mp = create_compressor("meanpool", model="smollm2-135m", pool_ratio=4, chunk_tokens=128)
    soft = mp.compress("a long document ...", question="What ...?")   # 4x fewer positions, question kept as text
    mp.generate(soft)

Question-focused (``question_focus > 0``, off by default; :mod:`.focus`): the same number of positions, spent
unevenly - the context's sentences closest to the question (a frozen sentence encoder ranks them) keep up to that
share of the positions at ``focus_ratio`` tokens each, the rest is pooled more coarsely. It needs no training: the
decoder reads a focused sentence's keys and values as it reads a pooled group's. The question is read when
compressing; without one there is nothing to focus on, and the span is pooled uniformly.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError, InvalidPromptError
from ..models.compat import cache_kwargs, new_cache, output_cache
from ..registry import register_compressor
from .encoder import Chunks, EncoderConfig
from .chunking import split_into_chunks
from .focus import QuestionFocus, group_tensor
from .pool_groups import averaging_matrix, group_index, pooling_matrix, token_index  # noqa: F401  (re-exported)
from .kv import KvCompressor, KvModel, kv_segments
from .losses import encoder_question_ids

PER_CHUNK = list[list[tuple[torch.Tensor, torch.Tensor]]]  # per chunk, per layer (keys, values) [H, G, d]


@dataclass
class MeanPoolConfig(EncoderConfig):
    """Mean-pooling settings. ``pool_ratio`` tokens become one cache position (the compression ratio);
    ``num_slots`` is derived (``ceil(chunk_tokens / pool_ratio)`` positions per full chunk) and need not be set."""

    pool_ratio: int = 4
    positions: str = "grouped"
    question_aware: bool = False  # the encoder reads the question before each chunk (see the module docstring)
    question_focus: float = 0.0  # > 0: this share of a span's positions goes to the sentences closest to the question
    focus_ratio: int = 1  # ... pooled this many tokens per position
    focus_encoder: str = "minilm-l6"  # the sentence encoder that ranks them

    def __post_init__(self) -> None:
        if int(self.pool_ratio) < 1:
            raise ConfigError(f"pool_ratio must be >= 1, got {self.pool_ratio}")
        if isinstance(self.question_focus, bool) or not 0.0 <= float(self.question_focus) < 1.0:
            raise ConfigError(f"question_focus must be a share in [0, 1), got {self.question_focus!r}")
        if not 1 <= int(self.focus_ratio) <= int(self.pool_ratio):
            raise ConfigError(f"focus_ratio must be between 1 and pool_ratio={self.pool_ratio}, got {self.focus_ratio}")
        if self.positions not in ("grouped", "standard"):
            raise ConfigError(f"positions must be 'grouped' or 'standard', got {self.positions!r}")
        self.num_slots = math.ceil(int(self.chunk_tokens) / int(self.pool_ratio))
        super().__post_init__()


def group_offsets(chunks: Chunks, groups: torch.Tensor) -> torch.Tensor:
    """``[N]``: where each chunk's first group sits in its span's cache (groups of the span's earlier chunks)."""
    offsets = torch.zeros_like(groups)
    for n in range(1, len(groups)):
        if chunks.span[n] == chunks.span[n - 1]:
            offsets[n] = offsets[n - 1] + groups[n - 1]
    return offsets


class MeanPoolModel(KvModel):
    """The chunk's per-layer keys/values averaged over groups of ``pool_ratio`` tokens -> the decoder's cache."""

    memory_slots = False

    def __init__(self, llm, config: MeanPoolConfig):
        super().__init__(llm, config)
        # the interleaved model pools to a fixed count per chunk instead (its config has no pool_ratio)
        self.pool_ratio = int(getattr(config, "pool_ratio", 0) or 0)
        self.grouped = getattr(config, "positions", "grouped") == "grouped"

    def compress_chunks(self, chunks: Chunks) -> PER_CHUNK:
        encoder = self.encoder
        return self.pool_embeds(encoder.embed(chunks.ids.to(encoder.embed_device)), chunks, ratio=self.pool_ratio)

    def pool_embeds(self, embeds: torch.Tensor, chunks: Chunks, ratio: int | None = None,
                    groups: int | None = None) -> PER_CHUNK:
        """Encode left-padded chunk embeddings ``[N, W, D]`` and average each layer's keys/values over groups of
        ``ratio`` tokens, or over ``groups`` near-equal groups per chunk (see :func:`pooling_matrix`)."""
        encoder = self.encoder
        mask = chunks.mask.to(embeds.device)
        own = chunks.own_mask.to(embeds.device)  # the chunk's tokens; a question read before them is not pooled
        if chunks.groups is not None:  # laid out by question_focus
            group = chunks.groups.to(embeds.device)
            counts = group.max(1).values + 1
        else:
            group, counts = group_index(own, ratio, groups=groups)
        pool = averaging_matrix(group, counts)
        # a question before the chunk takes the positions just before the chunk's first token (or group)
        before = token_index(mask) - (mask.sum(1) - own.sum(1))[:, None]
        if self.grouped:  # every token of group g at position (chunk offset + g): pooled keys are rotated as g
            offsets = group_offsets(chunks, counts.cpu()).to(embeds.device)
            position_ids = offsets[:, None] + torch.where(own.bool(), group, before)
        else:
            position_ids = before
        position_ids = torch.where(mask.bool(), position_ids, torch.zeros_like(position_ids))
        cache = new_cache(encoder.llm)
        out = encoder.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=True,
                               **cache_kwargs(encoder.backbone, cache))
        cache = output_cache(out) or cache
        pool = pool.to(cache.layers[0].keys.dtype)
        pooled = [(torch.einsum("ngw,nhwd->nhgd", pool, layer.keys), torch.einsum("ngw,nhwd->nhgd", pool, layer.values))
                  for layer in cache.layers]
        return [[(k[n, :, :g], v[n, :, :g]) for k, v in pooled] for n, g in enumerate(counts.tolist())]

    def per_span(self, encoded: PER_CHUNK, chunks: Chunks) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        return pooled_spans(encoded, chunks)


def pooled_spans(encoded: PER_CHUNK, chunks: Chunks) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per-chunk pooled KV -> per span, per layer ``(keys, values)`` ``[H, C, d]`` (its chunks' groups in order)."""
    out, start = [], 0
    for count in chunks.chunks_per_span():
        rows = encoded[start : start + count]
        out.append([(torch.cat([r[layer][0] for r in rows], -2), torch.cat([r[layer][1] for r in rows], -2))
                    for layer in range(len(rows[0]))])
        start += count
    return out


@register_compressor("meanpool")
class MeanPoolCompressor(KvCompressor):
    """Mean-pooling: every ``pool_ratio`` tokens of a chunk become one cached key/value per layer."""

    config_class = MeanPoolConfig
    module_class = MeanPoolModel

    @property
    def reads_question(self) -> bool:
        return bool(self.config.question_aware) or self.config.question_focus > 0

    @property
    def encoder_reads_question(self) -> bool:
        return bool(self.config.question_aware)

    @functools.cached_property
    def focus(self) -> QuestionFocus:
        cfg = self.config
        return QuestionFocus(cfg.focus_encoder, float(cfg.question_focus), int(cfg.focus_ratio), int(cfg.pool_ratio))

    @property
    def chunk_keys_follow(self) -> bool:
        # grouped positions place chunk c's groups after the earlier chunks'; standard ones start every chunk at 0
        return self.config.positions == "grouped"

    def _coerce(self, prompt, question, instruction):
        prompt = super()._coerce(prompt, question, instruction)
        # question_focus without a question pools uniformly; a question-aware encoder cannot go without one
        if self.encoder_reads_question and any(s.compressible for s in prompt.segments):  # checked before loading
            self.require_questions([prompt.question])
        return prompt

    def require_questions(self, questions) -> None:
        """A question-aware encoder compresses for a question: refuse spans without one."""
        if questions is None or any(not (q or "").strip() for q in questions):
            raise InvalidPromptError(f"{self.name} is question_aware: its encoder reads the question while "
                                     "compressing; give it in the prompt (question=...), not only to generate()")

    def encode_spans(self, texts, questions=None):
        prefixes, layout = None, None
        if self.encoder_reads_question:
            self.require_questions(questions)
            prefixes = [encoder_question_ids(self.tokenizer, q) for q in questions]
        if self.config.question_focus > 0:
            layout = functools.partial(self.lay_out_focus, texts, questions or [None] * len(texts))
        outs, chunks = self.encode_chunks(texts, prefixes, layout)
        per_chunk = [row for part in outs for row in part]
        spans = self.module.per_span(per_chunk, chunks)
        return kv_segments(spans, chunks, [row[0][0].shape[-2] for row in per_chunk], texts)

    def lay_out_focus(self, texts, questions, chunks: Chunks, offsets) -> None:
        """Set ``chunks.groups``: uniform groups of ``pool_ratio``, replaced by :mod:`.focus`'s layout per text.
        ``offsets``: each text's token character spans, as the encoder read them (a BOS, at ``(0, 0)``, is pooled
        with the first sentence's tokens)."""
        layouts = self.focus.groups(texts, questions, offsets, chunks.own_sizes_per_span())
        chunks.groups = group_tensor(chunks.own_mask, int(self.config.pool_ratio), layouts)

    def training_collate(self):
        """Training batches lay out the question-focused pooling of the QA examples that carry a ``focus``."""
        return functools.partial(super().training_collate(), pool_ratio=int(self.config.pool_ratio))

    def question_focus_of(self):
        """``(text, question, offsets) -> (focus per token, ratio)`` for training QA examples, or None without
        ``question_focus``; ``offsets``: the character span of each context token the example keeps, from the call
        that tokenized it. The layout :meth:`lay_out_focus` gives the same context at inference."""
        if not self.config.question_focus > 0:
            return None
        ratio, chunk_tokens = int(self.config.pool_ratio), int(self.config.chunk_tokens)

        def focus(text: str, question: str, offsets: list[tuple[int, int]]):
            positions = sum(math.ceil(len(c) / ratio) for c in split_into_chunks(offsets, chunk_tokens))
            return self.focus.token_focus(text, question, offsets, positions)

        return focus
