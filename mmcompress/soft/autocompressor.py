"""AutoCompressor (Chevalier et al., EMNLP 2023; princeton-nlp/AutoCompressors): a document is read segment by
segment; after each segment the model reads ``K`` summary tokens, and their final hidden states become **summary
vectors** that are prepended, as input embeddings, to every later segment (``accumulate``: segment ``i`` sees the
``K*i`` summaries of all earlier segments). The summaries of the whole document are the soft prompt.

Training is next-token LM over every segment with **truncated backpropagation** across segments: the summary
vectors are detached every ``bptt_segments`` segments (the reference's "softprompt stop gradient" between
substeps), and segment boundaries are drawn at random per batch (``randomize_segments``).

Each segment is run at positions ``0..S+L+K-1`` whatever its place in the document (the reference's Llama models), so
documents far longer than the model's window compress into summary vectors. ``summary_positions="none"`` is the
reference's OPT scheme instead (auto for OPT models): summary vectors and summary tokens take no position (OPT's
padding row of the learned position table) and the segment's tokens count from 0; ``max_summary_segments`` caps how many segments' summaries are
kept (the oldest are dropped), which bounds both the prompt each segment reads and the final soft-prompt size.

Layout of one segment: ``[summary vectors so far (S)] [segment tokens (L)] [summary tokens (K)]``.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidPromptError
from ..registry import register_compressor
from ..results import SoftSegment
from ..training.tasks import TaskSetup
from .base import SoftCompressor, SoftConfig


@dataclass
class AutoCompressorConfig(SoftConfig):
    """``num_slots`` summary vectors per segment of at most ``chunk_tokens`` tokens.

    ``accumulate``: later segments read the summaries of every earlier segment (False: only the last one's).
    ``summary_positions``: "sequential" (summaries and summary tokens numbered with the text, the reference's Llama
    code), "none" (they take no position, the reference's OPT code) or "auto" (none for OPT, sequential otherwise).
    ``finetune``: "lora", "full", or "frozen" (only the summary embeddings train; how a released model is loaded).
    ``max_summary_segments``: keep at most this many segments' summaries (None: all). Training: ``bptt_segments``
    segments share one gradient window; ``randomize_segments`` draws segment lengths at random.
    """

    num_slots: int = 16
    chunk_tokens: int = 256
    accumulate: bool = True
    max_summary_segments: int | None = None
    finetune: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bptt_segments: int = 2
    randomize_segments: bool = True
    summary_positions: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune not in ("lora", "full", "frozen"):
            raise ConfigError(f"finetune must be 'lora', 'full' or 'frozen', got {self.finetune!r}")
        if self.summary_positions not in ("auto", "sequential", "none"):
            raise ConfigError(f"summary_positions must be auto, sequential or none, got {self.summary_positions!r}")
        if int(self.bptt_segments) < 1:
            raise ConfigError(f"bptt_segments must be >= 1, got {self.bptt_segments}")
        if self.max_summary_segments is not None and int(self.max_summary_segments) < 1:
            raise ConfigError(f"max_summary_segments must be >= 1 or null, got {self.max_summary_segments}")
        self.lora_targets = tuple(self.lora_targets)


def random_segment_lengths(total: int, segments: int, rng: random.Random, minimum: int = 1) -> list[int]:
    """``segments`` positive lengths summing to ``total``, boundaries uniform at random (each >= ``minimum``)."""
    if segments * minimum > total:
        raise ConfigError(f"cannot cut {total} tokens into {segments} segments of at least {minimum}")
    cuts = sorted(rng.sample(range(1, total - segments * (minimum - 1)), segments - 1))
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total - segments * (minimum - 1)])]
    return [n + minimum - 1 for n in lengths]


class AutoCompressorModule(nn.Module):
    """The LLM (under LoRA or fully trainable) and the ``K`` summary token embeddings."""

    def __init__(self, llm: nn.Module, config: AutoCompressorConfig, eos_token_id: int | None):
        super().__init__()
        table = llm.get_input_embeddings().weight.detach().float()
        init = table[eos_token_id] if eos_token_id is not None else table.mean(0)
        # the reference initialises embed_summary to the EOS embedding
        self.summary_embeddings = nn.Parameter(init[None].repeat(int(config.num_slots), 1).clone())
        if config.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            for p in llm.parameters():
                p.requires_grad_(False)
            llm = get_peft_model(llm, LoraConfig(r=int(config.lora_r), lora_alpha=int(config.lora_alpha),
                                                 lora_dropout=float(config.lora_dropout),
                                                 target_modules=list(config.lora_targets)))
        else:
            for p in llm.parameters():
                p.requires_grad_(config.finetune == "full")
        self.llm = llm
        self.config = config
        self.positions_counted = config.summary_positions == "none" or (
            config.summary_positions == "auto" and getattr(llm.config, "model_type", "") == "opt")

    @property
    def base(self) -> nn.Module:
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def forward_segment(self, softprompt: torch.Tensor | None, segment_embeds: torch.Tensor,
                        mask: torch.Tensor | None = None,
                        text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``[softprompt][segment][summary tokens]``; return (hidden states of softprompt+segment, new summaries).

        ``mask`` ``(B, S+L)`` marks real positions (left padding is 0); positions count real tokens only.
        ``text`` ``(B, S+L)`` marks the text tokens among them (default: the segment's), for ``summary_positions``
        "none", where only text tokens take positions.
        """
        batch = segment_embeds.shape[0]
        summary = self.summary_embeddings.to(segment_embeds.dtype)[None].expand(batch, -1, -1)
        parts = [segment_embeds, summary] if softprompt is None else [softprompt, segment_embeds, summary]
        embeds = torch.cat(parts, dim=1)
        soft = 0 if softprompt is None else softprompt.shape[1]
        if mask is None:
            mask = torch.ones(batch, embeds.shape[1] - summary.shape[1], dtype=torch.long, device=embeds.device)
        if text is None:
            text = torch.cat([mask.new_zeros(batch, soft), mask[:, soft:]], dim=1) if mask.shape[1] > soft else mask
        mask = torch.cat([mask, mask.new_ones(batch, summary.shape[1])], dim=1)
        text = torch.cat([text, text.new_zeros(batch, summary.shape[1])], dim=1)
        hidden = self.base.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=self.positions(mask, text)).last_hidden_state
        k = summary.shape[1]
        return hidden[:, :-k], hidden[:, -k:]

    def positions(self, mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Position ids: real tokens numbered from 0 (sequential), or text tokens only with -1 elsewhere (OPT's
        padding row of its learned position table, what the reference gives summary vectors and tokens)."""
        if not self.positions_counted:
            return (mask.cumsum(-1) - 1).clamp(min=0)
        counted = text * mask
        return (counted.cumsum(-1) - 1).masked_fill(counted == 0, -1)

    def next_softprompt(self, softprompt: torch.Tensor | None, summaries: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if softprompt is None or not cfg.accumulate:
            return summaries
        out = torch.cat([softprompt, summaries], dim=1)
        if cfg.max_summary_segments is not None:
            out = out[:, -int(cfg.max_summary_segments) * summaries.shape[1]:]
        return out

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """LM loss over every segment of equal-length rows; summaries are detached every ``bptt_segments``."""
        ids: torch.Tensor = batch["input_ids"]
        lengths: list[int] = [int(n) for n in batch["segment_lengths"]]
        losses, counts = self.segment_losses(ids, lengths)
        total = sum(losses)
        return {"loss": total / sum(counts), "segments": torch.tensor(float(len(lengths)))}

    def segment_losses(self, ids: torch.Tensor, lengths: Sequence[int]) -> tuple[list[torch.Tensor], list[int]]:
        """Summed next-token losses per segment (and token counts), with truncated BPTT between windows."""
        embeds = self.llm.get_input_embeddings()(ids)
        head = self.base.get_output_embeddings()
        softprompt, losses, counts, start = None, [], [], 0
        for index, length in enumerate(lengths):
            if index and index % int(self.config.bptt_segments) == 0 and softprompt is not None:
                softprompt = softprompt.detach()  # truncated BPTT: no gradient into earlier windows
            hidden, summaries = self.forward_segment(softprompt, embeds[:, start:start + length])
            s = 0 if softprompt is None else softprompt.shape[1]
            # with a soft prompt, its last vector predicts the segment's first token
            predicting = hidden[:, max(s - 1, 0): s + length - 1]
            targets = ids[:, start + (0 if s else 1): start + length]
            logits = head(predicting).float()
            losses.append(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                      reduction="sum"))
            counts.append(targets.numel())
            softprompt = self.next_softprompt(softprompt, summaries)
            start += length
        return losses, counts


@register_compressor("autocompressor")
class AutoCompressor(SoftCompressor):
    """Compress text into accumulated summary vectors, segment by segment; generate with them as a soft prompt."""

    config_class = AutoCompressorConfig

    def build_module(self) -> AutoCompressorModule:
        return AutoCompressorModule(self.llm, self.config, self.tokenizer.eos_token_id)

    @torch.no_grad()
    def encode_spans(self, texts: Sequence[str]) -> list[SoftSegment]:
        """All texts advance together, one segment per step (rows with no segment left sit the step out)."""
        tokenizer, size = self.tokenizer, int(self.config.chunk_tokens)
        docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if any(not d for d in docs):
            raise InvalidPromptError("cannot compress an empty text")
        segments = [[d[i:i + size] for i in range(0, len(d), size)] for d in docs]
        module, device = self.module, self.device
        embed = self.llm.get_input_embeddings()
        softprompts: list[torch.Tensor | None] = [None] * len(docs)
        for step in range(max(map(len, segments))):
            rows = [b for b, segs in enumerate(segments) if step < len(segs)]
            width = max(len(segments[b][step]) for b in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
            mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
            for i, b in enumerate(rows):
                seg = segments[b][step]
                ids[i, width - len(seg):] = torch.tensor(seg, device=device)
                mask[i, width - len(seg):] = 1
            seg_embeds = embed(ids)
            prior = [softprompts[b] for b in rows]
            if prior[0] is None:
                hidden_in, full_mask, text = seg_embeds, mask, mask
                soft = None
            else:
                soft = torch.stack(prior)  # same length for every row at the same step
                # left padding must come first: [pad][soft][segment] -> move the pads to the front
                hidden_in, full_mask, text = _pads_first(torch.cat([soft, seg_embeds], 1),
                                                         torch.cat([mask.new_ones(soft.shape[:2]), mask], 1),
                                                         torch.cat([mask.new_zeros(soft.shape[:2]), mask], 1))
            _, summaries = module.forward_segment(None, hidden_in, full_mask, text)
            for i, b in enumerate(rows):
                softprompts[b] = module.next_softprompt(None if soft is None else soft[i:i + 1], summaries[i:i + 1])[0]
        return [SoftSegment(embeddings=sp, origin_tokens=len(d), chunks=len(segs), text=t)
                for sp, d, segs, t in zip(softprompts, docs, segments, texts)]

    def generate(self, soft_prompts: Any, question: Any = None, *, task: str = "qa", max_new_tokens: int | None = None,
                 **generate_kwargs: Any) -> list[str]:
        """As the base class; with ``summary_positions`` "none" the decoder's position ids skip the soft tokens, as
        the reference's OPT AutoCompressor reads a soft prompt (generation continues from the last text position)."""
        if not self.module.positions_counted:
            return super().generate(soft_prompts, question, task=task, max_new_tokens=max_new_tokens, **generate_kwargs)
        from .base import _as_batch, _per_item, left_pad

        soft = _as_batch(soft_prompts)
        rows = [self.decoder_parts(item, task, q) for item, q in zip(soft.items, _per_item(question, len(soft)))]
        inputs, mask = left_pad([torch.cat([p for p, _ in parts]) for parts in rows])
        text, _ = left_pad([torch.cat([torch.full((p.shape[0],), int(not s), device=self.device) for p, s in parts])
                            for parts in rows])
        kwargs = {**self._generate_defaults(max_new_tokens), **generate_kwargs}
        with torch.no_grad(), self.decoder_mode():
            out = self.llm.generate(inputs_embeds=inputs, attention_mask=mask,
                                    position_ids=self.module.positions(mask, text), **kwargs)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def training_loss(self, ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        losses, counts = self.module.segment_losses(ids, lengths)
        return sum(losses) / sum(counts)


def _pads_first(embeds: torch.Tensor, mask: torch.Tensor,
                text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reorder each row so masked (padding) positions come before real ones, keeping the real ones' order."""
    order = torch.argsort(mask, dim=1, stable=True)
    return embeds.gather(1, order[..., None].expand_as(embeds)), mask.gather(1, order), text.gather(1, order)


# ------------------------------------------------------------------------------------------------ training task
class SequenceDataset(torch.utils.data.Dataset):
    def __init__(self, sequences: list[list[int]]):
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> list[int]:
        return self.sequences[index]


class SegmentCollator:
    """Stack equal-length sequences and draw this batch's segment lengths (random or equal)."""

    def __init__(self, segments: int, randomize: bool, min_segment: int, seed: int):
        self.segments, self.randomize, self.min_segment = segments, randomize, min_segment
        self.rng = random.Random(seed)

    def __call__(self, rows: Sequence[list[int]]) -> dict[str, Any]:
        ids = torch.tensor(list(rows), dtype=torch.long)
        total = ids.shape[1]
        if self.randomize:
            lengths = random_segment_lengths(total, self.segments, self.rng, self.min_segment)
        else:
            base = total // self.segments
            lengths = [base] * (self.segments - 1) + [total - base * (self.segments - 1)]
        return {"input_ids": ids, "segment_lengths": lengths}


def build_autocompressor_task(recipe: dict[str, Any]) -> TaskSetup:
    """Recipe ``model:`` = AutoCompressorConfig fields; ``data:`` = corpus, sequence_tokens, segments,
    min_segment_tokens, examples, eval_examples, seed, max_documents."""
    from .corpus import DEFAULT_CORPUS, corpus_documents

    compressor = AutoCompressor(AutoCompressorConfig.from_dict(dict(recipe.get("model") or {})))
    data = dict(recipe.get("data") or {})
    known = {"corpus", "sequence_tokens", "segments", "min_segment_tokens", "examples", "eval_examples", "seed",
             "max_documents"}
    if set(data) - known:
        raise ConfigError(f"autocompressor data settings {sorted(set(data) - known)} unknown; valid: {sorted(known)}")
    cfg = compressor.config
    segments = int(data.get("segments", 4))
    sequence = int(data.get("sequence_tokens", segments * cfg.chunk_tokens // 2))
    min_segment = int(data.get("min_segment_tokens", max(1, sequence // (segments * 4))))
    docs = corpus_documents(data.get("corpus", DEFAULT_CORPUS), compressor.tokenizer, sequence, data.get("max_documents"))
    held_out = max(1, len(docs) // 20)
    seed = int(data.get("seed", 0))

    def windows(documents, count, rng):
        out = []
        while len(out) < count:
            doc = documents[rng.randrange(len(documents))]
            start = rng.randrange(len(doc) - sequence + 1)
            out.append(doc[start:start + sequence])
        return out

    train = windows(docs[:-held_out], int(data.get("examples", 2000)), random.Random(seed))
    evaluation = windows(docs[-held_out:], int(data.get("eval_examples", 16)), random.Random(seed + 1))
    module = compressor.module
    module.train()

    def finalize(trained: nn.Module, output_dir: Path) -> None:
        compressor.save_pretrained(output_dir / "final")

    return TaskSetup(module, SequenceDataset(train), SequenceDataset(evaluation),
                     SegmentCollator(segments, bool(cfg.randomize_segments), min_segment, seed), finalize)
