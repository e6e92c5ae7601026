"""Composing compressors: hard then soft, and a different method per segment.

    from mmcompress import Pipeline
    pipe = Pipeline(["longllmlingua", "runs/icae-pretrain/final"], stage_options=[{"rate": 0.5}, {}])
    soft = pipe.compress(["doc one ...", "doc two ..."], question="...")   # 2x hard, then 4x soft
    soft.ratio                    # total: original tokens / decoder positions (about 8x)
    soft.extras["stages"]         # each stage's own accounting
    pipe.generate(soft)           # answers through the soft stage's decoder

**Stages** run in order on the whole prompt. Every stage but the last must be a hard method (it returns a shorter
:class:`Prompt`); the last may be hard (the result is a :class:`CompressedPrompt`) or soft (a :class:`SoftPrompt`).
Kept segments (instructions, questions) pass through every stage untouched.

**Routes** send segments of one role to their own method before the stages run: ``routes={"instruction":
"selective_context"}`` compresses the instruction with Selective Context (which would otherwise be kept), and the
result is then kept verbatim by the later stages. So "instruction hard-compressed, documents soft" is
``Pipeline(["icae-folder"], routes={"instruction": {"compressor": "selective_context", "rate": 0.7}})``.

YAML (``compressor: pipeline``)::

    compressor: pipeline
    stages:
      - {compressor: selective_context, rate: 0.5}
      - runs/icae-pretrain/final
    routes:
      instruction: {compressor: truncate, rate: 0.8}
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .compressor import Compressor, CompressorConfig, batch_list
from .errors import ConfigError
from .prompt import Prompt, Role, TextSegment
from .registry import register_compressor
from .results import CompressedPrompt, SoftPrompt


@dataclass
class PipelineConfig(CompressorConfig):
    """``stages``: compressor specs run in order; ``routes``: role -> compressor spec for that role's segments.

    A spec is a registered name, a YAML config, a saved folder, a ``{compressor: name, **fields}`` mapping, or an
    already built :class:`Compressor`.
    """

    stages: list[Any] = field(default_factory=list)
    routes: dict[str, Any] = field(default_factory=dict)


def build_stage(spec: Any, options: dict[str, Any] | None = None) -> Compressor:
    from .factory import create_compressor

    if isinstance(spec, Compressor):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        if "compressor" not in spec:
            raise ConfigError(f"a pipeline stage mapping needs a 'compressor' key, got {sorted(spec)}")
        name = spec.pop("compressor")
        return create_compressor(name, **{**spec, **(options or {})})
    return create_compressor(spec, **(options or {}))


@register_compressor("pipeline")
class Pipeline(Compressor):
    """Hard stages, then optionally one soft stage, plus per-role routes; see the module docstring."""

    family = "pipeline"
    config_class = PipelineConfig

    def __init__(self, stages: Sequence[Any] | None = None, *, routes: dict[str, Any] | None = None,
                 stage_options: Sequence[dict[str, Any]] | None = None, config: PipelineConfig | None = None,
                 **overrides: Any):
        if config is None:
            config = PipelineConfig(stages=list(stages or overrides.pop("stages", [])),
                                    routes=dict(routes or overrides.pop("routes", {})))
        super().__init__(config, **overrides)
        if not self.config.stages:
            raise ConfigError("a pipeline needs at least one stage")
        options = list(stage_options or [{}] * len(self.config.stages))
        if len(options) != len(self.config.stages):
            raise ConfigError(f"{len(options)} stage_options for {len(self.config.stages)} stages")
        self.stages = [build_stage(s, o) for s, o in zip(self.config.stages, options)]
        for stage in self.stages[:-1]:
            if stage.family == "soft":
                raise ConfigError(f"only the last pipeline stage can be soft; {stage.name!r} is not last")
        self.routes = {Role.parse(role): build_stage(spec) for role, spec in self.config.routes.items()}
        for role, stage in self.routes.items():
            if stage.family == "soft":
                raise ConfigError(f"route {role.value!r}: routes take hard methods (soft spans are the last stage's)")

    @property
    def soft_stage(self):
        last = self.stages[-1]
        return last if last.family == "soft" else None

    @property
    def tokenizer(self):
        return self.stages[-1].tokenizer

    # ---------------------------------------------------------------------------------------------- compress
    def compress(self, prompt: Any, *, question: str | None = None, instruction: str | None = None, **kwargs: Any):
        out = self.compress_batch([prompt], question=question, instruction=instruction, **kwargs)
        return out if isinstance(out, SoftPrompt) else out[0]

    def compress_batch(self, prompts: Iterable[Any], *, question: str | None = None, instruction: str | None = None,
                       progress: bool = False, **kwargs: Any):
        """Hard work per prompt, then the soft stage (if any) on all prompts in one batch."""
        originals = [Prompt.coerce(p, question=question, instruction=instruction) for p in batch_list(prompts)]
        current, stage_logs = [], []
        t0 = time.perf_counter()
        for prompt in originals:
            log = []
            prompt = self._apply_routes(prompt, log)
            stages = self.stages[:-1] if self.soft_stage is not None else self.stages
            for stage in stages:
                result = stage.compress(prompt, **kwargs)
                log.append(_stage_record(stage.name, "stage", result.origin_tokens, result.compressed_tokens))
                prompt = result.prompt
            current.append(prompt)
            stage_logs.append(log)
        hard_seconds = time.perf_counter() - t0
        final = self.stages[-1]
        count = _counter(final)
        origin = [count(p.text) for p in originals]
        if self.soft_stage is None:
            results = []
            for orig, prompt, log, n in zip(originals, current, stage_logs, origin):
                after = count(prompt.text)
                results.append(CompressedPrompt(prompt=prompt, original=orig, selections=[None] * len(orig.segments),
                                                origin_tokens=n, compressed_tokens=after, method=self.name,
                                                timings={"total": hard_seconds / len(originals)},
                                                extras={"stages": log}))
            return results
        soft = final.compress_batch(current, **kwargs)
        for log, o, c in zip(stage_logs, soft.origin_tokens, soft.compressed_tokens):
            log.append(_stage_record(final.name, "stage", o, c))
        soft.extras["stages"] = stage_logs[0] if len(stage_logs) == 1 else stage_logs
        soft.origin_tokens = origin  # the total ratio counts from the prompt as the user gave it
        soft.method = self.name
        soft.timings = {"hard": hard_seconds, **{f"soft_{k}": v for k, v in soft.timings.items()},
                        "total": hard_seconds + soft.timings.get("total", 0.0)}
        return soft

    def _apply_routes(self, prompt: Prompt, log: list[dict[str, Any]]) -> Prompt:
        if not self.routes:
            return prompt
        segments = []
        for seg in prompt.segments:
            stage = self.routes.get(seg.role) if isinstance(seg, TextSegment) else None
            if stage is None or not seg.text.strip():
                segments.append(seg)
                continue
            result = stage.compress(Prompt.from_text(seg.text))
            log.append(_stage_record(stage.name, f"route:{seg.role.value}", result.origin_tokens,
                                     result.compressed_tokens))
            segments.append(seg.replace(text=result.text, keep=True))  # later stages leave it as it is now
        return prompt.replace_segments(segments)

    # ---------------------------------------------------------------------------------------------- generate
    def generate(self, soft_prompts: SoftPrompt, question: Any = None, **kwargs: Any) -> list[str]:
        if self.soft_stage is None:
            raise ConfigError("this pipeline has no soft stage; send its text to any LLM")
        return self.soft_stage.generate(soft_prompts, question, **kwargs)

    def reconstruct(self, soft_prompts: SoftPrompt, **kwargs: Any) -> list[str]:
        if self.soft_stage is None:
            raise ConfigError("this pipeline has no soft stage to reconstruct from")
        return self.soft_stage.reconstruct(soft_prompts, **kwargs)

    def __repr__(self) -> str:
        routes = {r.value: s.name for r, s in self.routes.items()}
        return f"Pipeline(stages={[s.name for s in self.stages]}, routes={routes})"


def _stage_record(name: str, kind: str, origin: int, compressed: int) -> dict[str, Any]:
    return {"method": name, "kind": kind, "origin_tokens": int(origin), "compressed_tokens": int(compressed),
            "ratio": round(origin / compressed, 4) if compressed else None}


def _counter(stage: Compressor):
    tok = stage.tokenizer

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count
