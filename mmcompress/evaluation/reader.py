"""The reader: an instruction-tuned LLM that answers from a (compressed) prompt, greedily and in batches.

Every QA system of the evaluation harness ends in a reader. Hard methods hand it text; soft methods and KV-cache
presses hand it what they prepared instead, through the same greedy loop:

    reader.answer(["...documents...\\n\\nWho won?"])                     # text, wrapped in the chat template
    reader.generate(inputs_embeds=embeds, attention_mask=mask)           # soft tokens spliced into the embeddings
    reader.generate(input_ids=suffix_ids, cache=pressed_cache)           # a prepared (compressed) KV cache

:meth:`Reader.template_parts` gives the chat template's text before and after the user message, so a soft method
can build ``[prefix embeddings, soft tokens, question embeddings, suffix embeddings]`` in the reader's own format.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config_base import Config
from ..models.compat import cache_kwargs, cache_length, output_cache

logger = logging.getLogger(__name__)

_PLACEHOLDER = "\x00USER\x00"


@dataclass
class ReaderConfig(Config):
    """``max_new_tokens``: answer length; ``batch_size``: prompts per generate call (sorted by length to pad
    little); ``max_input_tokens``: longer prompts lose their middle (None: the model's window minus the answer)."""

    model: str = "smollm2-135m"
    max_new_tokens: int = 24
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    max_input_tokens: int | None = None
    system_prompt: str | None = None  # None: the chat template's default


class Reader:
    """Greedy, batched answering with a causal LM and its chat template.

    Pass ``model=`` and ``tokenizer=`` objects (tests, or a model already loaded elsewhere), or a name in
    ``config.model`` that :func:`~mmcompress.models.load_language_model` resolves.
    """

    def __init__(self, config: ReaderConfig | None = None, *, model: Any = None, tokenizer: Any = None, **overrides):
        if isinstance(model, str):
            overrides["model"], model = model, None
        self.config = config or ReaderConfig(**overrides)
        if config is not None and overrides:
            from dataclasses import replace

            self.config = replace(config, **overrides)
        self._model, self._tokenizer = model, tokenizer
        self._given_model = model is not None

    @property
    def name(self) -> str:
        if self._given_model:
            return getattr(self._model.config, "_name_or_path", None) or type(self._model).__name__
        return self.config.model

    @property
    def model(self):
        if self._model is None:
            from ..models import load_language_model

            lm = load_language_model(self.config.model, self.config.device, self.config.dtype)
            self._model, self._tokenizer = lm.model, lm.tokenizer
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self.model  # noqa: B018  loads both
        return self._tokenizer

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------- templates
    def _messages(self, user_text: str) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": user_text}]
        if self.config.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        return messages

    def chat_text(self, user_text: str) -> str:
        """The full text the reader sees for ``user_text`` (chat template, generation prompt added)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(self._messages(user_text), tokenize=False,
                                                      add_generation_prompt=True)
        return f"{user_text}\nAnswer:"  # base models without a template

    def template_parts(self) -> tuple[str, str]:
        """``(prefix, suffix)``: the template's text before and after the user message."""
        full = self.chat_text(_PLACEHOLDER)
        prefix, suffix = full.split(_PLACEHOLDER)
        return prefix, suffix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings ``(n, d)`` of token ids (to build ``inputs_embeds`` around soft tokens)."""
        ids = torch.as_tensor(ids, device=self.device).long()
        return self.model.get_input_embeddings()(ids)

    @property
    def max_input_tokens(self) -> int:
        if self.config.max_input_tokens:
            return int(self.config.max_input_tokens)
        from ..models.loading import context_window

        return context_window(self.model, self.tokenizer) - self.config.max_new_tokens

    # ------------------------------------------------------------------------------------------- answering
    def answer(self, user_texts: Sequence[str], *, progress: bool = False) -> list[str]:
        """Greedy answers to each user message, batched by length."""
        from tqdm.auto import tqdm

        ids = [self._fit(self.encode(self.chat_text(t))) for t in user_texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        answers: list[str] = [""] * len(ids)
        bs = max(1, self.config.batch_size)
        for start in tqdm(range(0, len(order), bs), disable=not progress, desc="reader"):
            batch = [order[j] for j in range(start, min(start + bs, len(order)))]
            input_ids, mask = self._left_pad([ids[i] for i in batch])
            for i, text in zip(batch, self.generate(input_ids=input_ids, attention_mask=mask)):
                answers[i] = text
        return answers

    def answer_embeds(self, embeds: Sequence[torch.Tensor]) -> list[str]:
        """Greedy answers from ready ``(n_i, d)`` input embeddings (soft prompts), left-padded into batches."""
        answers = []
        bs = max(1, self.config.batch_size)
        for start in range(0, len(embeds), bs):
            chunk = list(embeds[start : start + bs])
            width = max(e.shape[0] for e in chunk)
            d = chunk[0].shape[-1]
            batch = torch.zeros(len(chunk), width, d, dtype=chunk[0].dtype, device=self.device)
            mask = torch.zeros(len(chunk), width, dtype=torch.long, device=self.device)
            for row, e in enumerate(chunk):
                batch[row, width - e.shape[0] :] = e.to(self.device)
                mask[row, width - e.shape[0] :] = 1
            answers += self.generate(inputs_embeds=batch, attention_mask=mask)
        return answers

    @torch.no_grad()
    def generate(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        position_offset: int | torch.Tensor | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy decoding from token ids or embeddings, optionally after a prepared KV ``cache``.

        ``attention_mask`` covers the new inputs only (1 = real, 0 = left padding). Positions continue from
        ``position_offset`` (default: the cache length), so a pressed cache that dropped entries can still place
        the new tokens where the uncompressed prompt would have ended.
        """
        model = self.model
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = input_ids if input_ids is not None else inputs_embeds
        b, n = x.shape[0], x.shape[1]
        device = self.device
        if attention_mask is None:
            attention_mask = torch.ones(b, n, dtype=torch.long, device=device)
        attention_mask = attention_mask.to(device)
        past = cache_length(cache)
        offset = past if position_offset is None else position_offset
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) + torch.as_tensor(offset, device=device).reshape(-1, 1)
        full_mask = torch.cat([torch.ones(b, past, dtype=attention_mask.dtype, device=device), attention_mask], dim=1)
        stop_ids = self.stop_ids()
        inputs = {"input_ids": x.to(device)} if input_ids is not None else {"inputs_embeds": x.to(device)}
        out_tokens: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=device)
        next_pos = position_ids[:, -1:] + 1
        for _ in range(max_new_tokens or self.config.max_new_tokens):
            out = model(**inputs, attention_mask=full_mask, position_ids=position_ids, use_cache=True,
                        **cache_kwargs(model, cache))
            cache = output_cache(out)
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, stop_ids[0]), token)
            out_tokens.append(token)
            done |= torch.isin(token, torch.as_tensor(stop_ids, device=device))
            if bool(done.all()):
                break
            inputs = {"input_ids": token[:, None]}
            position_ids = next_pos
            next_pos = next_pos + 1
            full_mask = torch.cat([full_mask, torch.ones(b, 1, dtype=full_mask.dtype, device=device)], dim=1)
        generated = torch.stack(out_tokens, 1).tolist() if out_tokens else [[] for _ in range(b)]
        texts = []
        for row in generated:
            cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    # --------------------------------------------------------------------------------------------- helpers
    def stop_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = []
        for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None):
            if isinstance(t, int) and t not in ids:
                ids.append(t)
        return ids or [0]

    def _fit(self, ids: list[int]) -> list[int]:
        """Drop the middle of a prompt longer than the reader's window (the question and template are at the end)."""
        limit = self.max_input_tokens
        if len(ids) <= limit:
            return ids
        logger.warning("reader input of %d tokens cut to %d (middle dropped)", len(ids), limit)
        head = limit // 2
        return ids[:head] + ids[len(ids) - (limit - head) :]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids()[0]
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.as_tensor(r)
            mask[i, width - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)
