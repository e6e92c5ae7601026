"""Reconstruction quality of soft compressors and pipelines: how much of the input the decoder regenerates from
the compressed prompt (ICAE's autoencoding metric).

For each text: compress it, let the frozen decoder regenerate it greedily (the [AE] task), and compare with the
input: corpus BLEU-4 (sacrebleu) and positional token accuracy (the fraction of input tokens reproduced at their
position), both in [0, 1]. Works for anything with ``compress_batch`` and ``reconstruct`` (every soft method and
:class:`~mmcompress.pipeline.Pipeline`).

    from mmcompress.evaluation.reconstruction import evaluate_reconstruction
    report = evaluate_reconstruction(create_compressor("runs/icae-pretrain/final"), held_out_texts)
    report.bleu4, report.token_accuracy, report.ratio
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .metrics import bleu4, token_accuracy


@dataclass
class ReconstructionReport:
    """Aggregate reconstruction metrics (and the per-text outputs when kept)."""

    method: str
    texts: int
    bleu4: float
    token_accuracy: float
    origin_tokens: int
    compressed_tokens: int
    seconds: float
    outputs: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.origin_tokens / self.compressed_tokens if self.compressed_tokens else float("inf")

    def to_dict(self, samples: int = 3) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = round(self.ratio, 4)
        out["outputs"], out["references"] = self.outputs[:samples], self.references[:samples]
        return out


def evaluate_reconstruction(compressor: Any, texts: Sequence[str], *, batch_size: int = 8,
                            max_new_tokens: int | None = None, tokenizer: Any = None,
                            reconstruct_options: dict[str, Any] | None = None) -> ReconstructionReport:
    """Compress ``texts`` in batches, regenerate each from its soft prompt, and score against the input.

    ``max_new_tokens`` defaults to the longest input plus a margin, so a reconstruction is never cut short.
    ``tokenizer`` (default: the compressor's) counts tokens for the positional accuracy. ``reconstruct_options``
    go to ``compressor.reconstruct`` (e.g. ``{"per_chunk": False}`` for the encoder methods).
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no texts to reconstruct")
    tok = tokenizer or compressor.tokenizer
    refs_ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    limit = max_new_tokens or max(len(r) for r in refs_ids) + 8
    outputs, origin, compressed = [], 0, 0
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        part = list(texts[start : start + batch_size])
        soft = compressor.compress_batch(part)
        outputs += compressor.reconstruct(soft, max_new_tokens=limit, **(reconstruct_options or {}))
        origin += soft.origin_total
        compressed += soft.compressed_total
    seconds = time.perf_counter() - t0
    out_ids = tok(outputs, add_special_tokens=False)["input_ids"]
    accuracy = sum(token_accuracy(o, r) for o, r in zip(out_ids, refs_ids)) / len(texts)
    return ReconstructionReport(method=getattr(compressor, "name", type(compressor).__name__), texts=len(texts),
                                bleu4=bleu4([o.strip() for o in outputs], [t.strip() for t in texts]),
                                token_accuracy=accuracy, origin_tokens=origin, compressed_tokens=compressed,
                                seconds=seconds, outputs=outputs, references=list(texts))
