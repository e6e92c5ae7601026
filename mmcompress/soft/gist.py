"""GIST tokens (Mu, Li, Goodman, NeurIPS 2023; jayelm/gisting): ``K`` gist tokens follow the text to compress, and
an attention mask makes every token after the gists see that text only through them. Trained with the plain LM
loss under that mask, the model learns to write the text into the gists' keys and values; at inference only the
gists' KV is kept (the text's own KV is dropped) and the rest of the prompt is decoded against it.

What differs from the reference code:

- LoRA by default (``finetune="lora"``, via peft); ``finetune="full"`` fine-tunes every weight as the paper does.
- Caching works at any batch size: each row's gist keys are re-rotated to positions ``0..K-1`` when stored
  (:class:`~mmcompress.results.SoftSegment` convention) and rotated to wherever they land in the decoder's prompt,
  instead of the reference's batch-1 ``gist_offset`` patch of the rotary embedding. RoPE is relative, so the result
  equals the masked full forward pass exactly (tested).
- Text longer than ``chunk_tokens`` is split into chunks, each gisted separately (``K`` gists per chunk).

Layout of one training row: ``[text (L)] [gist x K] [continuation (C)]``; the loss is on the continuation.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidPromptError
from ..models.decoding import CachedContext, generate_from_cache
from ..models.rotary import shift_keys
from ..models.compat import cache_kwargs, is_rotary, new_cache, output_cache
from ..registry import register_compressor
from ..results import SoftPrompt, SoftSegment
from ..training.tasks import TaskSetup
from .base import DecoderCache, SoftCompressor, SoftConfig, _as_batch, _per_item

PROMPT, GIST, AFTER, PAD = 0, 1, 2, -1  # segment ids of a training row


@dataclass
class GistConfig(SoftConfig):
    """``num_slots`` gist tokens per chunk of at most ``chunk_tokens`` tokens.

    ``finetune``: "lora" (adapter on ``lora_targets``), "full", or "frozen" (only the gist embedding trains; how a
    released model is loaded). ``tied_gists``: one shared gist embedding repeated ``K`` times, as in the paper (False:
    ``K`` separate embeddings). ``chunk_bos``: each chunk starts with the tokenizer's BOS, as the reference's
    ``tokenizer.encode`` of the instruction does (the gists then also summarise BOS, which later tokens cannot see).
    """

    num_slots: int = 8
    chunk_tokens: int = 128
    finetune: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    tied_gists: bool = True
    chunk_bos: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune not in ("lora", "full", "frozen"):
            raise ConfigError(f"finetune must be 'lora', 'full' or 'frozen', got {self.finetune!r}")
        self.lora_targets = tuple(self.lora_targets)


# ------------------------------------------------------------------------------------------------ the mask
def gist_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T, T)`` boolean attention mask from segment ids ``(B, T)`` (PROMPT / GIST / AFTER / PAD).

    Causal, no padding keys, and queries after the gists never see the prompt: they read it only through the
    gists (``make_gist_mask`` of the reference). Padding queries see themselves, so no softmax row is empty.
    """
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    keys_real = (segments != PAD)[:, None, :]
    blocked = (segments == AFTER)[:, :, None] & (segments == PROMPT)[:, None, :]
    allowed = causal[None] & keys_real & ~blocked
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    return allowed[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask (0 / most negative), which eager and SDPA attention both accept."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


# ------------------------------------------------------------------------------------------------ the module
class GistModule(nn.Module):
    """The LLM (under LoRA, or fully trainable) plus the gist embedding(s)."""

    def __init__(self, llm: nn.Module, config: GistConfig):
        super().__init__()
        embeddings = llm.get_input_embeddings().weight
        count = 1 if config.tied_gists else int(config.num_slots)
        # the reference initialises the new <GIST> token to the mean vocabulary embedding
        self.gist_embeddings = nn.Parameter(embeddings.detach().float().mean(0, keepdim=True).repeat(count, 1))
        if config.finetune == "lora":
            from ..models.lora import add_lora

            for p in llm.parameters():
                p.requires_grad_(False)
            llm = add_lora(llm, config)
        else:
            for p in llm.parameters():
                p.requires_grad_(config.finetune == "full")
        self.llm = llm
        self.num_gists = int(config.num_slots)

    def gists(self, batch: int) -> torch.Tensor:
        """``(B, K, D)`` gist input embeddings."""
        dtype = self.llm.get_input_embeddings().weight.dtype
        gists = self.gist_embeddings.expand(self.num_gists, -1) if self.gist_embeddings.shape[0] == 1 else self.gist_embeddings
        return gists.to(dtype)[None].expand(batch, -1, -1)

    def embed(self, input_ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the gist embedding written at GIST positions (K per row, in order)."""
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        is_gist = segments == GIST
        gists = self.gists(input_ids.shape[0]).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(is_gist[..., None], gists.to(embeds.dtype)) if is_gist.any() else embeds

    def forward(self, input_ids: torch.Tensor, segments: torch.Tensor, labels: torch.Tensor | None = None):
        embeds = self.embed(input_ids, segments)
        mask = additive_mask(gist_mask(segments), embeds.dtype)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self(batch["input_ids"], batch["segments"], batch["labels"]).loss}


def gist_row(text_ids: Sequence[int], after_ids: Sequence[int], num_gists: int, loss_on: Sequence[bool] | None = None,
             gist_id: int = 0) -> dict[str, list[int]]:
    """One training row: ids, segment ids and labels (-100 except on ``after_ids`` where ``loss_on`` is True)."""
    loss_on = [True] * len(after_ids) if loss_on is None else list(loss_on)
    ids = list(text_ids) + [gist_id] * num_gists + list(after_ids)
    segments = [PROMPT] * len(text_ids) + [GIST] * num_gists + [AFTER] * len(after_ids)
    labels = [-100] * (len(text_ids) + num_gists) + [t if keep else -100 for t, keep in zip(after_ids, loss_on)]
    return {"input_ids": ids, "segments": segments, "labels": labels}


def collate_rows(rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad rows (PAD segments, -100 labels)."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
           "segments": torch.full((len(rows), width), PAD, dtype=torch.long),
           "labels": torch.full((len(rows), width), -100, dtype=torch.long)}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        for key in out:
            out[key][i, :n] = torch.tensor(r[key], dtype=torch.long)
    return out


# ------------------------------------------------------------------------------------------------ the compressor
@register_compressor("gist")
class GistCompressor(SoftCompressor):
    """Compress text into the keys and values of ``num_slots`` gist tokens per chunk; generate against them."""

    config_class = GistConfig

    def build_module(self) -> GistModule:
        if not is_rotary(self.llm):
            raise ConfigError("gist caching re-rotates the gists' keys, so it needs a RoPE model (Llama, Qwen, "
                              f"Mistral, SmolLM...); {type(self.llm).__name__} uses absolute positions")
        return GistModule(self.llm, self.config)

    @property
    def decoder(self) -> nn.Module:
        """The (adapted) LLM that both writes the gists and reads them."""
        return self.module.llm

    def chunk_ids(self, text: str) -> list[list[int]]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidPromptError("cannot gist an empty text")
        size = int(self.config.chunk_tokens)
        bos = [self.tokenizer.bos_token_id] if self.config.chunk_bos and self.tokenizer.bos_token_id is not None else []
        return [bos + ids[i:i + size] for i in range(0, len(ids), size)]

    @torch.no_grad()
    def encode_spans(self, texts: Sequence[str]) -> list[SoftSegment]:
        """All chunks of all texts in one left-padded batch; keep each chunk's gist KV, re-rotated to ``0..K-1``."""
        chunks = [self.chunk_ids(t) for t in texts]
        flat = [c for cs in chunks for c in cs]
        kv = self.gist_kv(flat)  # per layer (keys, values), (N, H, K, d)
        out, start = [], 0
        for text, cs in zip(texts, chunks):
            n = len(cs)
            layers = []
            for keys, values in kv:
                # consecutive chunks' gists sit one after another: chunk j at positions j*K .. j*K+K-1
                k = torch.cat([shift_keys(self.decoder, keys[start + j:start + j + 1], j * self.module.num_gists)
                               for j in range(n)], dim=2)[0]
                v = torch.cat([values[start + j] for j in range(n)], dim=1)
                layers.append((k, v))
            out.append(SoftSegment(kv=tuple(layers), origin_tokens=sum(map(len, cs)), chunks=n, text=text))
            start += n
        return out

    def gist_kv(self, rows: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(keys, values)`` ``(N, H_kv, K, d)`` of the gists after each row, keys at positions ``0..K-1``."""
        device, k = self.device, self.module.num_gists
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width + k, dtype=torch.long, device=device)
        segments = torch.full((len(rows), width + k), PAD, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids[i, width - len(r):width] = torch.tensor(list(r), device=device)
            segments[i, width - len(r):width] = PROMPT
        segments[:, width:] = GIST
        lengths = torch.tensor([len(r) for r in rows], device=device)
        positions = (segments != PAD).long().cumsum(-1) - 1
        embeds = self.module.embed(ids, segments)
        mask = additive_mask(gist_mask(segments), embeds.dtype)
        cache = new_cache(self.decoder)
        self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions.clamp(min=0), use_cache=True,
                     logits_to_keep=1, **_cache_kw(self.decoder, cache))
        return [(shift_keys(self.decoder, layer.keys[:, :, -k:], -lengths), layer.values[:, :, -k:])
                for layer in cache.layers]

    # ---------------------------------------------------------------------------------------------- generate
    def generate(self, soft_prompts: SoftPrompt | Sequence[SoftPrompt], question: str | Sequence[str] | None = None,
                 *, task: str = "qa", max_new_tokens: int | None = None, return_details: bool = False,
                 **unused: Any) -> list[str]:
        """Decode each prompt against its gists' KV, the whole batch at once (greedy).

        Each row's pieces up to its last gisted span become a cache (kept text is read into it, gist KV is
        rotated to where it lands); the text after it and ``question`` are the left-padded suffix.
        """
        if unused:
            raise ConfigError(f"gist generate() is greedy and takes no {sorted(unused)}")
        soft = _as_batch(soft_prompts)
        questions = _per_item(question, len(soft))
        rows = [self._row_cache(pieces) for pieces in soft.items]
        suffixes = []
        for (_, _, tail), q, pieces in zip(rows, questions, soft.items):
            text = tail + (q or "")
            suffixes.append(self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])
        context = stack_row_caches(self.decoder, [(c, p) for c, p, _ in rows])
        tok = self.tokenizer
        generation = generate_from_cache(
            self.decoder, context, suffixes, max_new_tokens=int(max_new_tokens or self.config.max_new_tokens),
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0, restore=False)
        texts = tok.batch_decode(generation.token_ids, skip_special_tokens=True)
        return (texts, generation) if return_details else texts

    def decoder_cache(self, pieces: Sequence[Any], task: str = "qa") -> DecoderCache:
        """One prompt as :meth:`generate` reads it: its pieces up to the last gisted span as a cache (``task``: gist
        has no markers), and the text after it."""
        layers, position, tail = self._row_cache(pieces)
        return DecoderCache(self.decoder, stack_row_caches(self.decoder, [(layers, position)]), tail, nullcontext)

    @torch.no_grad()
    def _row_cache(self, pieces: Sequence[Any]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, str]:
        """``(per-layer (keys, values) (H, C, d), next position, text after the last soft span)`` for one prompt."""
        last_soft = max((i for i, p in enumerate(pieces) if isinstance(p, SoftSegment)), default=-1)
        layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        position = 0
        for i, piece in enumerate(pieces[: last_soft + 1]):
            if isinstance(piece, SoftSegment):
                if piece.kv is None:
                    raise ConfigError("gist generates from KV soft segments made by the gist compressor")
                new = [(shift_keys(self.decoder, k[None].to(self.device), position)[0], v.to(self.device))
                       for k, v in piece.kv]
                position += piece.num_tokens
            else:
                text = (_sep(piece) if i else "") + piece.text
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if not ids:
                    continue
                cache = new_cache(self.decoder)
                if layers is not None:
                    for layer_cache, (k, v) in zip(_cache_layers(cache, self.decoder, len(layers)), layers):
                        _fill(layer_cache, k[None], v[None])
                ids_t = torch.tensor([ids], device=self.device)
                out = self.decoder(input_ids=ids_t, position_ids=torch.arange(position, position + len(ids),
                                                                              device=self.device)[None],
                                   use_cache=True, logits_to_keep=1, **_cache_kw(self.decoder, cache))
                cache = output_cache(out) or cache
                full = [(layer.keys[0], layer.values[0]) for layer in cache.layers]
                start = 0 if layers is None else layers[0][0].shape[-2]
                new = [(k[:, start:], v[:, start:]) for k, v in full]
                position += len(ids)
            layers = new if layers is None else [(torch.cat([a, b], -2), torch.cat([c, d], -2))
                                                 for (a, c), (b, d) in zip(layers, new)]
        tail_pieces = pieces[last_soft + 1:]
        tail = "".join(((_sep(p) if (i or last_soft >= 0) else "") + p.text) for i, p in enumerate(tail_pieces))
        if last_soft >= 0 and not tail_pieces:
            tail = "\n\n"  # what follows a compressed span (the question) starts on its own paragraph
        return layers or [], position, tail


def _cache_kw(model: Any, cache: Any) -> dict[str, Any]:
    """``cache_kwargs`` for the model under a peft wrapper (whose forward only takes ``**kwargs``)."""
    return cache_kwargs(model.get_base_model() if hasattr(model, "get_base_model") else model, cache)


def _sep(piece: Any) -> str:
    return piece.sep if getattr(piece, "sep", None) is not None else "\n\n"


def _cache_layers(cache: Any, model: Any, count: int) -> list[Any]:
    """The first ``count`` layers of an empty DynamicCache (built from the model config, one per layer)."""
    if len(cache.layers) < count:
        raise ConfigError(f"the cache has {len(cache.layers)} layers, the soft prompt {count}")
    return cache.layers[:count]


def _fill(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Set a DynamicLayer's keys and values (initialising it the way its first ``update`` would)."""
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def stack_row_caches(model: Any, rows: Sequence[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]]) -> CachedContext:
    """Left-pad per-row caches ``[(H, C_b, d)]`` into one batched DynamicCache with its mask and next positions."""
    device = next(model.parameters()).device
    width = max((layers[0][0].shape[-2] if layers else 0) for layers, _ in rows)
    cache = new_cache(model)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for b, (layers, _) in enumerate(rows):
        if layers:
            mask[b, width - layers[0][0].shape[-2]:] = 1
    template = next((layers for layers, _ in rows if layers), None)
    if template is not None:
        for index, layer in enumerate(_cache_layers(cache, model, len(template))):
            ref_k, ref_v = template[index]
            keys = ref_k.new_zeros(len(rows), ref_k.shape[0], width, ref_k.shape[-1])
            values = ref_v.new_zeros(len(rows), ref_v.shape[0], width, ref_v.shape[-1])
            for b, (layers, _) in enumerate(rows):
                if layers:
                    k, v = layers[index]
                    keys[b, :, width - k.shape[-2]:] = k
                    values[b, :, width - v.shape[-2]:] = v
            _fill(layer, keys, values)
    positions = torch.tensor([p for _, p in rows], dtype=torch.long, device=device)
    return CachedContext(cache, mask, positions, [p for _, p in rows])


# ------------------------------------------------------------------------------------------------ training task
def gist_examples(documents: Sequence[Sequence[int]], count: int, num_gists: int, min_text: int, max_text: int,
                  continuation: int, seed: int) -> list[dict[str, list[int]]]:
    """Rows ``[text][gists][continuation]`` cut at random from documents; text length uniform in [min, max]."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < count:
        doc = documents[rng.randrange(len(documents))]
        length = rng.randint(min_text, max_text)
        if len(doc) < length + continuation:
            length = max(1, len(doc) - continuation)
            if length < min(min_text, len(doc)) or len(doc) <= continuation:
                continue
        start = rng.randrange(len(doc) - length - continuation + 1)
        rows.append(gist_row(doc[start:start + length], doc[start + length:start + length + continuation], num_gists))
    return rows


def build_gist_task(recipe: dict[str, Any]) -> TaskSetup:
    """Recipe ``model:`` = GistConfig fields; ``data:`` = corpus, examples, eval_examples, min_text_tokens,
    max_text_tokens (default chunk_tokens), continuation_tokens, seed."""
    from .corpus import DEFAULT_CORPUS, corpus_documents

    compressor = GistCompressor(GistConfig.from_dict(dict(recipe.get("model") or {})))
    data = dict(recipe.get("data") or {})
    known = {"corpus", "examples", "eval_examples", "min_text_tokens", "max_text_tokens", "continuation_tokens",
             "seed", "max_documents"}
    if set(data) - known:
        raise ConfigError(f"gist data settings {sorted(set(data) - known)} unknown; valid: {sorted(known)}")
    cfg = compressor.config
    max_text = int(data.get("max_text_tokens", cfg.chunk_tokens))
    min_text = int(data.get("min_text_tokens", max(1, max_text // 4)))
    continuation = int(data.get("continuation_tokens", 48))
    if max_text > cfg.chunk_tokens:
        raise ConfigError(f"max_text_tokens ({max_text}) cannot exceed chunk_tokens ({cfg.chunk_tokens})")
    docs = corpus_documents(data.get("corpus", DEFAULT_CORPUS), compressor.tokenizer, min_text + continuation,
                            data.get("max_documents"))
    held_out = max(1, len(docs) // 20)  # last documents are the eval split
    seed = int(data.get("seed", 0))
    train = gist_examples(docs[:-held_out], int(data.get("examples", 2000)), cfg.num_slots, min_text, max_text,
                          continuation, seed)
    evaluation = gist_examples(docs[-held_out:], int(data.get("eval_examples", 32)), cfg.num_slots, min_text, max_text,
                               continuation, seed + 1)
    module = compressor.module
    module.train()

    def finalize(trained: nn.Module, output_dir: Path) -> None:
        compressor.save_pretrained(output_dir / "final")

    return TaskSetup(module, train, evaluation, collate_rows, finalize)
