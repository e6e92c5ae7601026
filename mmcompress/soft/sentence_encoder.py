"""The frozen sentence encoder of xRAG: a Hugging Face encoder with sentence-transformers pooling.

Pooling is mean (all-MiniLM-L6-v2), CLS, max, or ``last`` (the last real token, as SFR-Embedding-Mistral and
xRAG's ``SFR.get_doc_embedding`` pool: Hannibal046/xRAG src/model/SFR/modeling_sfr.py:8-17).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

POOLINGS = ("mean", "cls", "max", "last")

class SentenceEncoder(nn.Module):
    """A frozen Hugging Face encoder with sentence-transformers pooling (mean over tokens by default).

    The pooling mode and L2 normalisation are read from a sentence-transformers folder (``1_Pooling/config.json``,
    ``modules.json``) when there is one, so ``minilm-l6`` gives exactly the all-MiniLM-L6-v2 sentence embedding.
    """

    def __init__(self, name: str, pooling: str = "auto", normalize: bool | None = None, max_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from ..errors import ModelNotFoundError
        from ..models.loading import resolve_model

        path = resolve_model(name)
        try:
            self.model = AutoModel.from_pretrained(path, dtype=dtype).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise ModelNotFoundError(f"could not load sentence encoder {name!r} from {path}: {e}") from None
        self.model.requires_grad_(False)
        st = _sentence_transformers_settings(path)
        self.pooling = st.get("pooling", "mean") if pooling == "auto" else pooling
        if self.pooling not in POOLINGS:
            raise ConfigError(f"encoder pooling must be auto, {', '.join(POOLINGS)}, got {self.pooling!r}")
        self.normalize = st.get("normalize", False) if normalize is None else bool(normalize)
        limit = st.get("max_seq_length") or getattr(self.model.config, "max_position_embeddings", 512)
        self.max_tokens = int(min(max_tokens or limit, limit))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> SentenceEncoder:
        return super().train(False)  # frozen: dropout stays off even while the projector trains

    def tokenize_chunks(self, texts: Sequence[str],
                        max_chunks: int | None = None) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Split every text into windows of at most ``max_tokens`` encoder tokens (special tokens included).

        Returns the padded encoder batch of all chunks, in document order, and the number of chunks per text.
        """
        enc = self.tokenizer(list(texts), max_length=self.max_tokens, truncation=True, padding=True,
                             return_overflowing_tokens=True, return_tensors="pt")
        owner = enc.pop("overflow_to_sample_mapping").tolist()
        keep, counts, seen = [], [0] * len(texts), [0] * len(texts)
        for row, doc in enumerate(owner):
            seen[doc] += 1
            if max_chunks is None or seen[doc] <= max_chunks:
                keep.append(row)
                counts[doc] += 1
        batch = {k: v[keep] for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return batch, counts

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``(n, dim)`` sentence embeddings of an encoder batch."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # the last real token of each row, left or right padded
            last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _sentence_transformers_settings(source: str) -> dict[str, Any]:
    """Pooling, normalisation and window from a sentence-transformers folder or cached hub repo (if it is one)."""
    settings: dict[str, Any] = {}
    pooling = _model_file(source, "1_Pooling/config.json")
    if pooling:
        cfg = json.loads(pooling.read_text())
        settings["pooling"] = ("cls" if cfg.get("pooling_mode_cls_token")
                               else "max" if cfg.get("pooling_mode_max_tokens") else "mean")
    modules = _model_file(source, "modules.json")
    if modules:
        settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    st_config = _model_file(source, "sentence_bert_config.json")
    if st_config:
        settings["max_seq_length"] = json.loads(st_config.read_text()).get("max_seq_length")
    return settings


def _model_file(source: str, name: str) -> Path | None:
    folder = Path(source)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:  # a hub id: only what is already in the local cache (never a download)
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, name)
        return Path(found) if isinstance(found, str) else None
    except Exception:
        return None
