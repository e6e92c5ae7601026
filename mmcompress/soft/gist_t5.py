"""GIST tokens on an encoder-decoder (Mu, Li, Goodman, NeurIPS 2023; jayelm/gisting ``src/gist_t5.py``): FLAN-T5
gist models, e.g. the released ``jayelm/flan-t5-xxl-gist-1``.

The encoder reads ``Instruction: ...\\n<GIST>...<GIST>`` and the gists' self-attention keys/values at every encoder
layer, plus their last encoder states, are the compressed instruction (``GistActivations``). Answering, the encoder
reads the kept input (``\\nInput: ...</s>``) after those cached gists, and the decoder cross-attends to the gists'
states and the input's: exactly what the training-time gist masks give (``make_gist_mask`` in the encoder: tokens
after the gists see none of the instruction; ``make_mask_pre_first_gist`` for cross-attention).

transformers' T5 encoder takes no cache, so the cached gists are put back where they would have been computed:
the encoder runs over ``[<GIST> x K] + input``, forward hooks on every encoder layer's ``k`` / ``v`` projections
overwrite the gist rows with the cached keys/values, and the gist rows of the final states are overwritten with
the cached states. T5's positions are a relative bias computed over that sequence, the same relative positions as
the reference's cached pass; the gist rows' own queries are computed and thrown away.

    from mmcompress import create_compressor
    from mmcompress.soft.published.gist import gist_prompt
    gist = create_compressor("flan-t5-xxl-gist-1", dtype="bfloat16")          # a local copy of the release
    soft = gist.compress_batch([gist_prompt("Translate to French.", "The cat sleeps.", suffix="")])
    gist.generate(soft)
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..errors import ConfigError, InvalidPromptError
from ..registry import register_compressor
from ..results import SoftSegment
from .base import SoftCompressor, SoftConfig, _as_batch, _per_item


@dataclass
class GistT5Config(SoftConfig):
    """``model``: a FLAN-T5 gist folder (its tokenizer holds ``gist_token``); ``num_slots`` gist tokens summarise
    each compressed text (the released models: 1); ``chunk_tokens``: the longest text one gist set summarises (a
    longer one is an error, not cut). The model is used as released: nothing is trained here."""

    num_slots: int = 1
    chunk_tokens: int = 512
    gist_token: str = "<GIST>"


class GistT5Module(nn.Module):
    """Holds the frozen seq2seq model (no trainable tensors: a released gist model is read, not tuned)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False)


@register_compressor("gist_t5")
class GistT5Compressor(SoftCompressor):
    """GIST on FLAN-T5: each compressed text becomes ``num_slots`` gists' encoder keys/values and states."""

    config_class = GistT5Config

    @property
    def llm(self):
        """The seq2seq model (T5ForConditionalGeneration), loaded on first use."""
        if self._llm is None:
            from transformers import AutoModelForSeq2SeqLM

            from ..models.loading import _load_tokenizer, pick_device, pick_dtype, place_pretrained, resolve_model

            path, device = resolve_model(self.config.model), pick_device(self.config.device)
            self._llm = place_pretrained(AutoModelForSeq2SeqLM, path, self.config.model, device,
                                         pick_dtype(self.config.dtype, device), self.config.model_kwargs).eval()
            if self._tokenizer is None:
                self._tokenizer = _load_tokenizer(path)
        return self._llm

    def build_module(self) -> GistT5Module:
        if not getattr(self.llm.config, "is_encoder_decoder", False) or not hasattr(self.llm, "encoder"):
            raise ConfigError(f"gist_t5 reads an encoder-decoder (T5) model; {self.config.model} is not one")
        self.gist_id  # noqa: B018  (a tokenizer without the gist token is refused before any work)
        return GistT5Module(self.llm)

    @property
    def gist_id(self) -> int:
        token = self.config.gist_token
        if token not in self.tokenizer.get_vocab():
            raise ConfigError(f"the tokenizer of {self.config.model} has no {token} token; a gist model adds it")
        return int(self.tokenizer.convert_tokens_to_ids(token))

    # ------------------------------------------------------------------------------------------------ compress
    def encode_spans(self, texts: Sequence[str]) -> list[SoftSegment]:
        """One encoder batch over ``text + <GIST> x K`` (no ``</s>``, as src/compress.py:131-134 drops it)."""
        k, gist, tok = int(self.config.num_slots), self.gist_id, self.tokenizer
        rows = tok([t + self.config.gist_token * k for t in texts], add_special_tokens=False)["input_ids"]
        for text, row in zip(texts, rows):
            if row.count(gist) != k or row[-k:] != [gist] * k:
                raise InvalidPromptError(f"the text to gist must not contain {self.config.gist_token} itself: {text[:60]!r}")
            if len(row) - k > self.config.chunk_tokens:
                raise InvalidPromptError(f"a text to gist has {len(row) - k} tokens, more than chunk_tokens="
                                         f"{self.config.chunk_tokens}; raise chunk_tokens or split it")
        ids, mask = self._right_pad(rows)
        keys, values = [], []
        with self._capture(keys, values):
            states = self.llm.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.sum(1).tolist()
        out = []
        for b, (text, n) in enumerate(zip(texts, lengths)):
            gists = slice(n - k, n)  # right padding: the gists end each row
            kv = tuple((rearrange(key[b, gists], "k (h d) -> h k d", d=self.head_dim),
                        rearrange(val[b, gists], "k (h d) -> h k d", d=self.head_dim)) for key, val in zip(keys, values))
            out.append(SoftSegment(kv=kv, encoder_states=states[b, gists], origin_tokens=n - k, text=text))
        return out

    @property
    def head_dim(self) -> int:
        return int(self.llm.config.d_kv)

    def _right_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r, dtype=torch.long), 1
        return ids.to(self.device), mask.to(self.device)

    def _projections(self):
        for block in self.llm.encoder.block:
            attention = block.layer[0].SelfAttention
            yield attention.k, attention.v

    @contextmanager
    def _capture(self, keys: list, values: list):
        """Record every encoder layer's key and value projections ``[B, T, H*d]``."""
        hooks = []
        for k_proj, v_proj in self._projections():
            hooks.append(k_proj.register_forward_hook(lambda _m, _i, out: keys.append(out)))
            hooks.append(v_proj.register_forward_hook(lambda _m, _i, out: values.append(out)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    @contextmanager
    def _inject(self, cached: list[tuple[torch.Tensor, torch.Tensor]]):
        """Overwrite rows ``0..K-1`` of every encoder layer's key and value projections with the cached gists'
        (``cached[layer] = (keys, values)`` ``[B, K, H*d]``)."""
        def put(tensor):
            def hook(_module, _inputs, out):
                out = out.clone()
                out[:, : tensor.shape[1]] = tensor.to(out.dtype)
                return out
            return hook

        hooks = []
        for (k_proj, v_proj), (keys, values) in zip(self._projections(), cached):
            hooks += [k_proj.register_forward_hook(put(keys)), v_proj.register_forward_hook(put(values))]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    # ------------------------------------------------------------------------------------------------ decode
    def encoder_outputs(self, soft_prompts, question=None, task: str = "qa"):
        """The encoder's output for each prompt, as the reference computes it with cached gists: ``(states [B, T, D],
        mask [B, T])``, rows ``[gists][input ids + </s>]``, right-padded."""
        soft = _as_batch(soft_prompts)
        gist, rows, cached = self.gist_id, [], []
        for item, q in zip(soft.items, _per_item(question, len(soft))):
            head, tail = self.split_pieces(item, task, q)
            spans = [p for p in head if isinstance(p, SoftSegment)]
            if len(head) != 1 or len(spans) != 1 or spans[0].encoder_states is None:
                raise InvalidPromptError("gist_t5 reads one gist span (made by gist_t5) followed by kept text; this "
                                         f"prompt has {len(spans)} soft span(s) and {len(head) - len(spans)} text "
                                         "piece(s) before its last one")
            # after a gist token, as src/compress.py:148-167 tokenizes the input (then drops that token)
            ids = self.tokenizer(self.config.gist_token + "".join(tail))["input_ids"]
            rows.append([gist] * spans[0].num_tokens + ids[ids.index(gist) + 1:])
            cached.append(spans[0])
        if len({s.num_tokens for s in cached}) != 1:
            raise InvalidPromptError("the prompts of one batch must have the same number of gist tokens")
        ids, mask = self._right_pad(rows)
        k = cached[0].num_tokens
        layers = [(torch.stack([rearrange(s.kv[i][0], "h k d -> k (h d)") for s in cached]).to(self.device),
                   torch.stack([rearrange(s.kv[i][1], "h k d -> k (h d)") for s in cached]).to(self.device))
                  for i in range(len(cached[0].kv))]
        with torch.no_grad(), self._inject(layers):
            states = self.llm.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.clone()
        states[:, :k] = torch.stack([s.encoder_states for s in cached]).to(self.device, states.dtype)
        return states, mask

    def generate(self, soft_prompts, question=None, *, task: str = "qa", max_new_tokens=None, **generate_kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        states, mask = self.encoder_outputs(soft_prompts, question, task)
        kwargs = self._generate_defaults(max_new_tokens)
        kwargs.update(generate_kwargs)
        with torch.no_grad():
            out = self.llm.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                                    **kwargs)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def next_token_logits(self, soft_prompts, question=None, *, task: str = "qa") -> torch.Tensor:
        """``[B, V]`` float32 logits of the decoder's first step (after its start token)."""
        states, mask = self.encoder_outputs(soft_prompts, question, task)
        start = torch.full((states.shape[0], 1), int(self.llm.config.decoder_start_token_id), device=self.device)
        with torch.no_grad():
            out = self.llm(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=start)
        return out.logits[:, -1].float()

    def decoder_cache(self, pieces, task: str = "qa"):
        raise ConfigError("gist_t5 is an encoder-decoder: its decoder reads the encoder's states, not a decoder "
                          "cache; use generate() / next_token_logits()")
