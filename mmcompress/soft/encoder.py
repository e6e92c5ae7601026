"""The shared soft encoder: the base LLM under a LoRA adapter (peft) reads a chunk of input embeddings followed by
``K`` learned memory slots; what comes out at the slot positions is the soft prompt. The decoder is the same LLM
with the adapter switched off (``with encoder.decoder():``), so it is exactly the frozen base model.

Inputs of any length are split into chunks of at most ``chunk_tokens`` (ICAE's multi-span scheme: ``n =
ceil(T / L)`` chunks of near-equal length), all chunks of a batch are encoded in **one** forward pass (left-padded,
so the slots sit at the same indices in every row), and each span's slots are concatenated in chunk order.

The encoder works on ``inputs_embeds``: :meth:`SoftEncoder.encode_embeds` does not care whether a row came from
token embeddings or from an image adapter. Two outputs:

- ``"hidden"``: the slots' last hidden states ``[N, K, D]`` (ICAE);
- ``"kv"``: the slots' keys and values at every layer, ``[N, H_kv, K, d]`` each (500xCompressor).

Positions. In ``"standard"`` mode a chunk's tokens sit at ``0..L_i-1`` and its slots at ``L_i..L_i+K-1``. In
``"prefix"`` mode (used for KV) the whole row is shifted so that slot ``j`` of chunk ``c`` of a span sits at
position ``c*K + j``: with rotary embeddings attention depends only on relative positions, so the encoder computes
the same thing, but the cached keys come out rotated exactly as a decoder cache of ``n*K`` prefix tokens would be,
and the decoder simply continues at position ``n*K``. In ``"after_text"`` mode (500xCompressor's own code) the slots
keep the positions they have after the chunk's text, shifted by ``c*K`` for chunk ``c``.

How the input is read follows each method's official code by default (``icae``: ``encoder_bos``, ICAE v2 tokenizes the
text with its BOS; ``kv``: ``pad_to`` / ``pad_id``, 500xCompressor right-pads every text with EOS and attends to the
padding, and ``marker_ids``, fixed tokens in place of learned markers); published checkpoints
(:mod:`mmcompress.soft.published`) set the same. mmcompress's own variant of each is its config's
``MMCOMPRESS_VARIANT``; this base class and the methods without official code (meanpool, interleaved) keep it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from ..errors import ConfigError
from ..models.compat import cache_kwargs, is_rotary, new_cache, output_cache
from ..models.lora import activate_adapter, add_lora, add_second_adapter
from ..models.rotary import shift_rotary_keys
from ..results import SoftPrompt, SoftSegment
from .base import SoftConfig, _as_batch
from .chunking import TASK_IDS, Chunks, gather_spans, make_chunks, split_into_chunks  # noqa: F401  (re-exported)
from .losses import qa_template


PAD_TO_CHUNK = "chunk_tokens"  # pad_to: every chunk right-padded to chunk_tokens (500xCompressor's context_len)
MARKERS_500X = "500x"  # marker_ids: 500xCompressor's fixed tokens (BOS before regeneration, else nothing)


@dataclass
class EncoderConfig(SoftConfig):
    """A soft method built on :class:`SoftEncoder`: LoRA settings on top of :class:`SoftConfig`.

    ``lora_targets`` is "all-linear" (every linear layer but the LM head, the default of issue 4's recipe) or a list
    of module names such as ``["q_proj", "v_proj"]`` (ICAE v1). ``gradient_checkpointing`` trades compute for memory.
    """

    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: Any = "all-linear"
    decoder_lora_r: int = 0  # > 0: the decoder gets its own trained LoRA (part of the compressor; 0: frozen decoder)
    gradient_checkpointing: bool = False
    max_input_tokens: int = 4096  # longer inputs are rejected with a clear error, not silently truncated
    qa_template: str = "Question: {question}\nAnswer:"  # how questions read after the [FT]/qa marker
    # how the encoder reads its input and what follows the soft prompt (see the module docstring; icae and kv
    # default to their official code's choices, this base class and meanpool / interleaved to mmcompress's own)
    encoder_bos: bool = False  # prepend the tokenizer's BOS to each text before chunking (ICAE v2)
    # > 0 or "chunk_tokens": right-pad every chunk to that length with pad_id, the padding attended (500xCompressor)
    pad_to: int | str = 0
    pad_id: Any = None  # the padding token of pad_to (None: the tokenizer's EOS)
    # {task: [token ids]} read after the soft prompt instead of the learned markers (a task left out: nothing), or
    # "500x": BOS before regeneration, nothing before a question or a continuation (500xCompressor)
    marker_ids: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.qa_template = qa_template(self.qa_template)  # a name (plain, chatml) or a literal with {question}
        if int(self.lora_r) < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if int(self.decoder_lora_r) < 0:
            raise ConfigError(f"decoder_lora_r must be >= 0, got {self.decoder_lora_r}")
        if isinstance(self.pad_to, str) and self.pad_to != PAD_TO_CHUNK:
            raise ConfigError(f"pad_to must be a length >= 0 or {PAD_TO_CHUNK!r}, got {self.pad_to!r}")
        if self.padded_length() < 0:
            raise ConfigError(f"pad_to must be >= 0, got {self.pad_to}")
        if 0 < self.padded_length() < int(self.chunk_tokens):
            raise ConfigError(f"pad_to={self.pad_to} is shorter than chunk_tokens={self.chunk_tokens}")
        markers = self.marker_ids
        if markers is not None and markers != MARKERS_500X and (not isinstance(markers, dict)
                                                                or set(markers) - set(TASK_IDS)):
            raise ConfigError(f"marker_ids must map tasks {sorted(TASK_IDS)} to token id lists, or be "
                              f"{MARKERS_500X!r}, got {markers!r}")

    def padded_length(self) -> int:
        """The length every chunk is right-padded to (0: left padding, masked)."""
        return int(self.chunk_tokens) if self.pad_to == PAD_TO_CHUNK else int(self.pad_to)

    def fixed_markers(self, tokenizer: Any) -> dict[str, list[int]] | None:
        """``marker_ids`` as token ids per task (None: the learned markers)."""
        if self.marker_ids == MARKERS_500X:
            return {"ae": [tokenizer.bos_token_id], "lm": [], "qa": []}
        return self.marker_ids


class SoftEncoder(nn.Module):
    """Base LLM + LoRA + ``num_slots`` memory slots; see the module docstring."""

    def __init__(self, llm: nn.Module, config: EncoderConfig, memory_slots: bool = True):
        super().__init__()
        self.num_slots = int(config.num_slots) if memory_slots else 0
        self.chunk_tokens = int(config.chunk_tokens)
        for p in llm.parameters():
            p.requires_grad_(False)
        self.peft = add_lora(llm, config)
        self.tuned_decoder = int(config.decoder_lora_r) > 0
        if self.tuned_decoder:
            add_second_adapter(self.peft, "decoder", config, int(config.decoder_lora_r))
            activate_adapter(self.peft, "default")
        if config.gradient_checkpointing:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            llm.enable_input_require_grads()
        table = llm.get_input_embeddings().weight.detach()
        # slots start near typical token embeddings so the first steps see in-distribution inputs
        init = table.float().mean(0) + torch.randn(self.num_slots, table.shape[1]) * table.float().std()
        self.slots = nn.Parameter(init.to(table.dtype)) if memory_slots else None
        self.rotary = is_rotary(llm)

    # ------------------------------------------------------------------------------------------------- parts
    @property
    def llm(self) -> nn.Module:
        """The causal LM (with LoRA layers injected; under :meth:`decoder` they are switched off)."""
        return self.peft.get_base_model()

    @property
    def backbone(self) -> nn.Module:
        """The transformer without the LM head (LlamaModel, Qwen2Model, ...)."""
        llm = self.llm
        return getattr(llm, llm.base_model_prefix)

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    @contextmanager
    def decoder(self):
        """The decoder: the base LLM with the encoder's adapter off inside this block - frozen, or under its own
        ``decoder`` adapter when ``decoder_lora_r > 0`` (then that adapter is part of the compressor: trained with
        it, saved and loaded with it, and every generation from its soft prompts goes through it)."""
        if not self.tuned_decoder:
            with self.peft.disable_adapter():
                yield
            return
        activate_adapter(self.peft, "decoder")
        try:
            yield
        finally:
            activate_adapter(self.peft, "default")

    # ------------------------------------------------------------------------------------------------ encode
    def encode(self, chunks: Chunks, output: str = "hidden", positions: str = "standard"):
        device = self.embed_device
        return self.encode_embeds(self.embed(chunks.ids.to(device)), chunks.mask.to(device),
                                  chunks.index.to(device), output=output, positions=positions)

    @property
    def embed_device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def encode_embeds(self, embeds: torch.Tensor, mask: torch.Tensor, chunk_index: torch.Tensor | None = None,
                      output: str = "hidden", positions: str = "standard"):
        """Encode left-padded chunk embeddings ``[N, L, D]`` (``mask`` ``[N, L]``) with the slots appended.

        Returns ``[N, K, D]`` hidden states (``output="hidden"``) or a list over layers of ``(keys, values)``
        ``[N, H_kv, K, d]`` (``output="kv"``). ``chunk_index`` ``[N]`` (chunk number within its span) is needed for
        ``positions="prefix"`` and ``"after_text"``.
        """
        if output not in ("hidden", "kv"):
            raise ValueError(f"output must be 'hidden' or 'kv', got {output!r}")
        n, width, _ = embeds.shape
        k = self.num_slots
        slots = repeat(self.slots, "k d -> n k d", n=n).to(embeds.dtype)
        inputs = torch.cat([embeds, slots], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(n, k)], dim=1)
        lengths = mask.sum(1)
        offset = torch.zeros_like(lengths)
        if positions == "prefix":
            if not self.rotary:
                raise ConfigError("prefix positions (the kv method) need a model with rotary position embeddings")
            if chunk_index is None:
                raise ValueError("positions='prefix' needs chunk_index")
            offset = chunk_index.to(lengths.device) * k - lengths
        elif positions == "after_text":
            if chunk_index is None:
                raise ValueError("positions='after_text' needs chunk_index")
            offset = chunk_index.to(lengths.device) * k
        elif positions != "standard":
            raise ValueError(f"positions must be 'standard', 'prefix' or 'after_text', got {positions!r}")
        idx = torch.arange(width + k, device=embeds.device)[None, :]
        position_ids = idx - (width - lengths)[:, None] + offset[:, None]
        position_ids = torch.where(full_mask.bool(), position_ids, torch.zeros_like(position_ids))
        if output == "hidden":
            out = self.backbone(inputs_embeds=inputs, attention_mask=full_mask, position_ids=position_ids, use_cache=False)
            return out.last_hidden_state[:, -k:]
        cache = new_cache(self.llm)
        out = self.backbone(inputs_embeds=inputs, attention_mask=full_mask, position_ids=position_ids, use_cache=True,
                            **cache_kwargs(self.backbone, cache))
        cache = output_cache(out) or cache
        return [(layer.keys[:, :, -k:], layer.values[:, :, -k:]) for layer in cache.layers]


# ----------------------------------------------------------------------------------------- trainable model
class SlotModel(nn.Module):
    """The trainable model of an encoder-based soft method: :class:`SoftEncoder` plus learned task markers.

    Subclasses implement :meth:`decoder_hidden`: run the frozen decoder on the soft prompt and the text that
    follows it, and return the decoder's last hidden states and the labels aligned with them. The loss is computed
    from the labelled positions only (:func:`~mmcompress.soft.losses.sliced_lm_loss`).

    A training batch (see :func:`~mmcompress.soft.losses.collate`) holds the chunks to compress (``chunk_ids``,
    ``chunk_mask``, ``chunk_span``, ``chunk_index``), the decoder text after the marker (``tail_ids``,
    ``tail_mask``, ``labels`` with -100 where there is no loss) and the ``task`` of each example.
    """

    encoder_output = "hidden"
    positions = "standard"
    memory_slots = True  # False: the soft prompt is made from the text's own positions (mean-pooling), no slots
    # the next-token loss: "chunked" (LM head and cross-entropy fused over chunks of the labelled rows), "sliced" (the
    # labelled rows' logits at once, what the recipes trained with before 2026-12-08) or "full" (full-vocabulary
    # float32 logits at every position, the unoptimised reference); the same values, at different speeds
    lm_loss = "chunked"

    def __init__(self, llm: nn.Module, config: EncoderConfig):
        super().__init__()
        self.encoder = SoftEncoder(llm, config, memory_slots=self.memory_slots)
        table = llm.get_input_embeddings().weight.detach().float()
        init = table.mean(0) + torch.randn(len(TASK_IDS), table.shape[1]) * table.std()
        self.markers = nn.Parameter(init.to(llm.get_input_embeddings().weight.dtype))

    def chunks_from_batch(self, batch: dict[str, Any]) -> Chunks:
        lengths = torch.bincount(batch["chunk_span"], minlength=batch["tail_ids"].shape[0]).tolist()
        return Chunks(batch["chunk_ids"], batch["chunk_mask"], batch["chunk_span"], batch["chunk_index"], lengths,
                      batch.get("chunk_pool_mask"), groups=batch.get("chunk_groups"))

    def compress_chunks(self, chunks: Chunks):
        return self.encoder.encode(chunks, output=self.encoder_output, positions=self.positions)

    def decoder_hidden(self, encoded: Any, chunks: Chunks, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden [B, T, D], labels [B, T])`` of the frozen decoder reading the soft prompt then the tail."""
        raise NotImplementedError

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from .losses import LM_LOSSES

        chunks = self.chunks_from_batch(batch)
        encoded = self.compress_chunks(chunks)
        hidden, labels = self.decoder_hidden(encoded, chunks, batch)
        loss_fn = LM_LOSSES[self.lm_loss]
        if "label_weights" in batch:
            loss, accuracy = loss_fn(hidden, labels, self.encoder.lm_head,
                                     weights=aligned_weights(batch["label_weights"], batch["labels"], labels))
        else:
            loss, accuracy = loss_fn(hidden, labels, self.encoder.lm_head)
        return {"loss": loss, "token_accuracy": accuracy}

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        out = self.training_step(batch)
        return {k: float(v) for k, v in out.items()}

    def marker_embeddings(self, task: torch.Tensor) -> torch.Tensor:
        """``[B, 1, D]`` marker of each example's task."""
        return self.markers[task][:, None, :]


def aligned_weights(weights: torch.Tensor, batch_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The batch's loss weights (aligned with its ``labels``) aligned with the labels a method's decoder returned,
    which may have columns put before them (a marker, memory slots): those weigh 1."""
    shift = labels.shape[1] - batch_labels.shape[1]
    if shift < 0 or not torch.equal(labels[:, shift:].cpu(), batch_labels.cpu()):
        raise ConfigError("loss weights need a method whose decoder labels are the batch's labels with columns "
                          "put before them")
    return F.pad(weights, (shift, 0), value=1.0).to(labels.device)


class QATemplate:
    """Mixin: a question read after the soft prompt for the ``qa`` task takes the config's ``qa_template``."""

    def format_question(self, question: str, task: str) -> str:
        return self.config.qa_template.format(question=question) if task == "qa" else question


class SlotDecoding(QATemplate):
    """Mixin of compressors whose module holds a :class:`SoftEncoder` (``module.encoder``) and one learned marker per
    task (``module.markers``): the marker read after the soft prompt, and the frozen decoder (adapter off)."""

    def marker(self, task: str):
        if task not in TASK_IDS:
            raise ConfigError(f"unknown task {task!r}; use one of {sorted(TASK_IDS)}")
        fixed = self.config.fixed_markers(self.tokenizer) if hasattr(self.config, "fixed_markers") else None
        if fixed is not None:  # fixed tokens (possibly none) instead of the learned marker
            return self.embed_ids(fixed.get(task))
        return self.module.markers[TASK_IDS[task]][None]

    def decoder_mode(self):
        return self.module.encoder.decoder()


class EncoderCompressor(SlotDecoding):
    """Mixin of compressors built on :class:`SlotModel` (icae, kv): build, encode spans, markers, decoder mode, and
    reconstruction chunk by chunk."""

    module_class: type[SlotModel] = SlotModel
    encode_batch_chunks = 64  # chunks per encoder forward when compressing
    reconstruct_batch = 32  # chunks per generate() call when reconstructing
    # kv-form spans: chunk c's keys are rotated to follow the chunks before it (False: every chunk starts at 0)
    chunk_keys_follow = True

    def chunk_segments(self, segment: SoftSegment) -> list[SoftSegment]:
        """A span's encoder chunks as one-chunk segments, each laid out as if its chunk had been compressed alone
        (keys rotated back to start at position 0): what one autoencoding example looks like in training."""
        layout = segment.chunk_layout
        if not layout or len(layout) == 1:
            return [segment]
        backbone = self.module.encoder.backbone
        out, start = [], 0
        for tokens, count in layout:
            part = slice(start, start + count)
            if segment.embeddings is not None:
                form = {"embeddings": segment.embeddings[part]}
            else:
                shift = -start if self.chunk_keys_follow else 0
                form = {"kv": tuple((shift_rotary_keys(k[:, part], shift, backbone, i), v[:, part])
                                    for i, (k, v) in enumerate(segment.kv))}
            out.append(SoftSegment(**form, origin_tokens=tokens, role=segment.role, chunk_layout=((tokens, count),)))
            start += count
        return out

    def reconstruct(self, soft_prompts, *, per_chunk: bool = True, max_new_tokens: int | None = None,
                    **generate_kwargs: Any) -> list[str]:
        """Regenerate each prompt's compressed text (the autoencoding task), one string per prompt.

        ``per_chunk`` (default): each encoder chunk is decoded on its own from its own soft tokens, which is the
        task the autoencoder was trained on (one chunk per example), and the chunks' texts are joined (spans by a
        blank line; kept text is not regenerated). Each chunk generates at most its own token count plus 8, and at
        most ``max_new_tokens`` when given. ``per_chunk=False``: the decoder reads the whole prompt, kept text included,
        at once (the base class's behaviour); beyond one chunk that is a task the autoencoder never saw, and a
        long document comes back as a few garbled words.
        """
        if not per_chunk:
            return super().reconstruct(soft_prompts, max_new_tokens=max_new_tokens, **generate_kwargs)
        soft = _as_batch(soft_prompts)
        jobs: dict[int, list[tuple[list[str], int, SoftSegment]]] = {}  # limit -> (its span's texts, chunk, segment)
        spans: list[list[list[str]]] = []  # prompt -> span -> chunk texts
        for item in soft.items:
            spans.append([])
            for segment in (p for p in item if isinstance(p, SoftSegment)):
                chunks = self.chunk_segments(segment)
                texts = [""] * len(chunks)
                spans[-1].append(texts)
                for c, chunk in enumerate(chunks):
                    own = chunk.origin_tokens + 8 if chunk.origin_tokens else 0
                    limit = min(max_new_tokens, own or max_new_tokens) if max_new_tokens else own
                    jobs.setdefault(limit, []).append((texts, c, chunk))
        for limit, group in jobs.items():  # chunks of one length decode together
            for lo in range(0, len(group), self.reconstruct_batch):
                part = group[lo : lo + self.reconstruct_batch]
                batch = SoftPrompt([[chunk] for *_, chunk in part], soft.method, [ch.origin_tokens for *_, ch in part],
                                   [ch.num_tokens for *_, ch in part])
                outputs = self.generate(batch, None, task="ae", max_new_tokens=limit or None, **generate_kwargs)
                for (texts, c, _), text in zip(part, outputs):
                    texts[c] = text
        return ["\n\n".join("".join(chunks) for chunks in item) for item in spans]

    def build_module(self):
        return self.module_class(self.llm, self.config)

    def tokenize_spans(self, texts: Sequence[str], offsets: bool = False):
        """The encoder's ids of each text (after a BOS when ``encoder_bos``); with ``offsets``, also each token's
        character span in its text (the BOS's is ``(0, 0)``), from the same tokenizer call: ``(ids, offsets)``."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=offsets)
        ids, spans = enc["input_ids"], enc.get("offset_mapping")
        if self.config.encoder_bos:
            ids = [[self.tokenizer.bos_token_id, *row] for row in ids]
            if offsets:
                spans = [[(0, 0), *row] for row in spans]
        for text, row in zip(texts, ids):
            if len(row) > self.config.max_input_tokens:
                from ..errors import InvalidPromptError

                raise InvalidPromptError(
                    f"a segment has {len(row)} tokens, more than max_input_tokens={self.config.max_input_tokens}; "
                    "raise max_input_tokens or split the document")
        return (ids, spans) if offsets else ids

    def chunk_padding(self) -> tuple[int, int]:
        """``(pad id, pad_to)`` of the encoder's chunks: attended right padding to ``pad_to`` (EOS unless ``pad_id``
        says otherwise), or masked left padding with the tokenizer's pad token when ``pad_to`` is 0."""
        pad_to = self.config.padded_length()
        if pad_to:
            return (self.tokenizer.eos_token_id if self.config.pad_id is None else int(self.config.pad_id)), pad_to
        return (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0), 0

    def training_collate(self):
        """The collate function of training batches, reading the input as :meth:`encode_chunks` does (BOS, chunk
        padding) and putting fixed markers where the learned ones would be."""
        import functools

        from .losses import collate

        tok = self.tokenizer
        chunk_pad, pad_to = self.chunk_padding()
        return functools.partial(
            collate, chunk_tokens=self.config.chunk_tokens,
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            bos_id=tok.bos_token_id if self.config.encoder_bos else None, chunk_pad_id=chunk_pad, pad_to=pad_to,
            marker_ids=self.config.fixed_markers(tok), question_aware=self.encoder_reads_question)

    @property
    def encoder_reads_question(self) -> bool:
        """Whether the encoder reads the question before each chunk (not only uses it to lay out the chunk)."""
        return self.reads_question

    def encode_chunks(self, texts: Sequence[str], prefixes: Sequence[Sequence[int]] | None = None,
                      layout: Callable[[Chunks, list], None] | None = None) -> tuple[list[Any], Chunks]:
        """Encode every chunk of every text (in batches of ``encode_batch_chunks``); per-chunk outputs + chunks.
        ``prefixes``: ids read before each chunk of each text (a question-aware encoder's question). ``layout``:
        called with the chunks and each text's token offsets (:meth:`tokenize_spans`) before the chunks are encoded
        (it may set their pooling ``groups``)."""
        module = self.module
        pad, pad_to = self.chunk_padding()
        if layout is None:
            ids, offsets = self.tokenize_spans(texts), None
        else:
            ids, offsets = self.tokenize_spans(texts, offsets=True)
        chunks = make_chunks(ids, self.config.chunk_tokens, pad, pad_to=pad_to, prefixes=prefixes)
        if self.config.encoder_bos:  # the texts' own tokens are what was compressed (origin_tokens), not the BOS
            chunks.lengths = [n - 1 for n in chunks.lengths]
            chunks.sizes = [n - (i == 0) for n, i in zip(chunks.sizes, chunks.index.tolist())]
        if layout is not None:
            layout(chunks, offsets)
        outs = [module.compress_chunks(chunks.rows(part)) for part in span_batches(chunks, self.encode_batch_chunks)]
        return outs, chunks


def span_batches(chunks: Chunks, size: int) -> list[slice]:
    """Consecutive row ranges of about ``size`` chunks that never cut a span: a span's later chunks take their
    positions from its earlier ones (grouped mean-pooling), so they must be encoded in the same forward pass."""
    parts, start, end = [], 0, 0
    for count in chunks.chunks_per_span():
        if end > start and end - start + count > size:
            parts.append(slice(start, end))
            start = end
        end += count
    if end > start:
        parts.append(slice(start, end))
    return parts
