"""Prompt compression against attention-side methods at the same budget.

Every method answers the same questions with SmolLM2-135M-Instruct as reader, through one decoding path
(:func:`mmcompress.kvcache.generate_from_cache`): the method prepares a KV cache standing in for the context
(chat-template prefix, instruction, documents), the question and the chat-template suffix are read after it, and
the answer is decoded greedily. At budget ``r``:

- hard methods keep ``r`` of the documents' tokens (instruction and question untouched) and the reader prefills
  what is left;
- KV presses prefill the whole context and keep ``r`` of its KV entries per layer;
- soft methods compress the documents at ratio ``1/r`` (``chunk_tokens = num_slots / r``): ``gist`` and
  ``autocompressor`` as one text, ``icae`` and ``kv`` (saved folders, ``--icae`` / ``--kv``) through their
  ``compress()`` (one soft span per document), decoded by the adapter-free base model after their [FT] marker;
- pipelines: ``HARD+PRESS`` (e.g. ``selective_context+snapkv``) applies the hard method and then the press, each
  at ``sqrt(r)``; ``HARD+SOFT`` (e.g. ``longllmlingua+icae``) is an :class:`mmcompress.Pipeline`: the hard method
  at ``--pipeline-hard-rate`` (2x), then the soft method at the rest of the budget (``r / 0.5``: 1x, 2x, 5x).

Measured per example: answer EM / F1 / contains-answer, the KV cache the answer is decoded from (entries and MiB at
decode start, peak MiB at the end of decoding: on CPU the cache is the memory a method changes; process RSS is
dominated by the weights), time to compress, time to prefill, decode tokens per second.

Runs append to ``benchmarks/results/equal_budget.json`` (rows of one (data, method) are replaced), so the table
can be built by several short runs; the Markdown table and the PNG plot are rebuilt from all rows each time
(``--fresh``: the table holds this run's rows only). Compressions (hard results, soft spans) are cached on disk
(``--cache``, keyed by method, its config and weights, rate and the exact prompt) together with the seconds they
took when computed, so a rerun only repeats the reader's prefill and decoding and reports the original
compression times.

    PYTHONPATH=. python benchmarks/equal_budget.py --data multidoc --methods full random selective_context \
        knorm snapkv streaming_llm sliding_window icae longllmlingua+icae --icae runs/soft/icae --n 12
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/common.py, also when loaded by path (tests)

from mmcompress.evaluation.harness import DEFAULT_INSTRUCTION, QAExample, load_qa_file  # noqa: E402
from mmcompress.evaluation.metrics import contains_answer, exact_match, f1_score  # noqa: E402
from mmcompress.kvcache import CachedContext, create_press, generate_from_cache, list_presses, prefill  # noqa: E402
from mmcompress.models.decoding import cache_kwargs  # noqa: E402
from mmcompress.models.compat import output_cache  # noqa: E402
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()), ROOT.parent / "shared")) / "data"
DATA = {"multidoc": SHARED / "multidoc_qa_dev.jsonl", "longdoc": SHARED / "longdoc_qa.jsonl"}
RESULTS = ROOT / "benchmarks" / "results"
HARD = ("random", "selective_context", "llmlingua", "longllmlingua", "llmlingua2")
PRESSES = ("knorm", "snapkv", "streaming_llm", "sliding_window")
SOFT = ("gist", "autocompressor", "icae", "kv")
ENCODER_SOFT = ("icae", "kv")  # compress() / Pipeline path: soft spans + the method's task marker
FAMILY = {**{m: "hard" for m in HARD}, **{p: "attention" for p in PRESSES}, **{m: "soft" for m in SOFT},
          "full": "none"}


def family(method: str) -> str:
    return "pipeline" if "+" in method else FAMILY.get(method, "?")


def split_pipeline(method: str) -> tuple[str, str]:
    """``"longllmlingua+icae"`` -> ("longllmlingua", "icae"): a hard method, then a press or an encoder soft method."""
    hard, _, second = method.partition("+")
    if hard not in HARD or second not in (*PRESSES, *ENCODER_SOFT):
        raise SystemExit(f"pipeline {method!r}: write HARD+PRESS or HARD+SOFT with HARD in {HARD}, "
                         f"PRESS in {PRESSES}, SOFT in {ENCODER_SOFT}")
    return hard, second


def machine() -> str:
    return machine_line()


# ------------------------------------------------------------------------------------------------ the reader
class Reader:
    """SmolLM2-135M-Instruct with its chat template, and the split of a QA prompt into context / question ids.

    ``template=(prefix, suffix)`` replaces the chat template (tiny test tokenizers have none)."""

    def __init__(self, model: Any, tokenizer: Any, template: tuple[str, str] | None = None):
        self.model, self.tokenizer = model, tokenizer
        if template is None:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                                 add_generation_prompt=True)
            template = tuple(text.split("\x00"))
        self.prefix, self.suffix = template
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop = [t for t in {tokenizer.eos_token_id, im_end} if t is not None and t != tokenizer.unk_token_id]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def head_text(self, documents: list[str]) -> str:
        return self.prefix + "\n\n".join([DEFAULT_INSTRUCTION, *documents])

    def question_ids(self, ex: QAExample) -> list[int]:
        return self.encode("\n\n" + ex.question + self.suffix)


def kv_bytes_per_entry(model: Any) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * next(model.parameters()).element_size())


# ------------------------------------------------------------------------------------------------ the cache
def cache_safe_types() -> list[Any]:
    """The only classes a cached compression may contain: results, prompts, numpy arrays and dtypes. Anything else
    in a cache file (a planted pickle) makes ``torch.load(weights_only=True)`` refuse it instead of running it."""
    from mmcompress.prompt import ImageSegment, Policy, Prompt, Role, TextSegment
    from mmcompress.results import CompressedPrompt, SegmentSelection, SoftSegment

    dtypes = [t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return [CompressedPrompt, SegmentSelection, SoftSegment, Prompt, TextSegment, ImageSegment, Role, Policy,
            (getattr(np, "_core", None) or np.core).multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def load_cached(path: Path) -> tuple[Any, float]:
    """``(value, seconds)`` from a cache file, loaded with ``weights_only=True`` and only :func:`cache_safe_types`."""
    import pickle

    try:
        with torch.serialization.safe_globals(cache_safe_types()):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise SystemExit(f"error: cached compression {path} cannot be loaded safely ({str(e).splitlines()[0][:200]}); "
                         "delete it (or the --cache folder) and run again") from None


class CompressionCache:
    """Compressions on disk, reused across runs: ``folder/<sha1 of the key>.pt`` holds ``(value, seconds)``.

    ``spent`` adds up the seconds each returned value took when it was computed (this run or an earlier one), so
    a cached compression reports its original time. ``folder=None`` caches nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self.spent, self.hits, self.misses = 0.0, 0, 0

    def get(self, key: Any, compute: Any) -> Any:
        path = None
        if self.folder is not None:
            digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
            path = self.folder / f"{digest}.pt"
            if path.is_file():
                value, seconds = load_cached(path)
                self.hits += 1
                self.spent += seconds
                return value
        t0 = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - t0
        self.misses += 1
        self.spent += seconds
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save((value, seconds), path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        return value

    def wrap_hard(self, compressor: Any, fingerprint: dict[str, Any]) -> Any:
        """Cache ``compressor.compress`` (also when a :class:`~mmcompress.Pipeline` calls it) per prompt and rate."""
        original = compressor.compress

        def compress(prompt: Any, **kwargs: Any):
            rate = kwargs.get("rate") or compressor.config.rate
            key = {"hard": compressor.name, "config": fingerprint, "rate": rate, "kwargs": sorted(set(kwargs) - {"rate"}),
                   "prompt": [(s.role.value, s.text) for s in prompt.segments]}
            return self.get(key, lambda: original(prompt, **kwargs))

        compressor.compress = compress
        return compressor

    def wrap_soft(self, compressor: Any, source: dict[str, Any]) -> Any:
        """Cache ``compressor.encode_spans`` (what ``compress`` and pipelines call) per texts and config."""
        original = compressor.encode_spans

        def encode_spans(texts: Any):
            key = {"soft": compressor.name, "source": source, "config": compressor.config.to_dict(), "texts": list(texts)}
            return self.get(key, lambda: original(texts))

        compressor.encode_spans = encode_spans
        return compressor


def weights_source(path: str | Path | None) -> dict[str, Any]:
    """What identifies loaded weights: the path, and the size and time of its weights file."""
    if not path:
        return {"path": None}
    weights = Path(path, "trainable.safetensors")
    stat = weights.stat() if weights.is_file() else None
    return {"path": str(Path(path).resolve()), "size": stat and stat.st_size, "mtime": stat and stat.st_mtime}


def soft_note(name: str, path: str | Path | None) -> str:
    """Which weights a soft method's rows come from."""
    if path and Path(path, "trainable.safetensors").is_file() and not Path(path, "mmcompress_config.json").is_file():
        return f"checkpoint {Path(path).name} of a CPU run of configs/train/{name}.yaml ({path})"
    if path and Path(path, "mmcompress_config.json").is_file():
        return f"{training_note(path)} ({path})"
    return "UNTRAINED (no checkpoint given): a floor, not the method's quality"


def method_notes(args: argparse.Namespace, methods: list[str]) -> dict[str, str]:
    """What the table's footnotes say about the methods of a run (also when all their rows are reused)."""
    notes = {}
    for method in methods:
        parts = method.split("+")
        for part in parts:
            if part in SOFT:
                notes[part] = soft_note(part, getattr(args, part, None))
            if part == "llmlingua2":
                from mmcompress.hard.llmlingua2 import default_classifier

                notes[part] = f"the default registered classifier ({default_classifier()})"
        if "+" in method and parts[1] in ENCODER_SOFT:
            notes[method] = (f"mmcompress.Pipeline([{parts[0]} at rate {args.pipeline_hard_rate}, {parts[1]}]): the "
                             f"soft stage compresses each kept document at ratio {args.pipeline_hard_rate:g} / budget")
        elif "+" in method:
            notes[method] = f"{parts[0]} at rate sqrt(budget), then the {parts[1]} press at sqrt(budget)"
    return notes


def training_note(path: str | Path) -> str:
    """How many steps the run that saved ``path`` logged (its ``log.jsonl`` sits in the folder or beside it)."""
    trained = Path(path) / "TRAINED.json"  # written by benchmarks/soft_reconstruction_curve.py
    if trained.is_file():
        info = json.loads(trained.read_text())
        return (f"trained {info.get('step')} steps of batch {info.get('batch_size')} (lr {info.get('lr')}, "
                f"bf16 {info.get('bf16')}) by benchmarks/soft_reconstruction_curve.py: autoencoding only, so the "
                "[FT] (qa) marker the rows use is untrained")
    for log in (Path(path) / "log.jsonl", Path(path).parent / "log.jsonl"):
        if log.is_file():
            steps = [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
            return f"trained {max([s for s in steps if s] or [0])} steps on CPU"
    return "trained (no training log beside it)"


# ------------------------------------------------------------------------------------------------ the systems
@dataclass
class Prepared:
    """What a method hands the decoder: ``model`` decodes (inside ``mode``) from ``context`` after ``question``."""

    model: Any
    context: CachedContext
    question: list[int]
    compress_s: float
    prefill_s: float
    extras: dict[str, Any] = field(default_factory=dict)
    mode: Any = contextlib.nullcontext  # called: a context manager to decode in (a soft method's decoder mode)


class Systems:
    """``prepare(method, example, rate) -> Prepared``. ``compressors`` pre-loads methods by name (tests)."""

    def __init__(self, reader: Reader, args: argparse.Namespace, compressors: dict[str, Any] | None = None,
                 cache: CompressionCache | None = None):
        self.reader, self.args = reader, args
        self.cache = cache or CompressionCache(None)
        self._hard: dict[str, Any] = {}
        self._soft: dict[str, Any] = {}
        self._pipelines: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.compress_only = False  # True: run and cache the compressions, build no context (warming the cache)
        for name, compressor in (compressors or {}).items():
            if name in HARD or name.startswith("pipeline:"):
                self._hard[name] = self.cache.wrap_hard(compressor, self._hard_fingerprint(compressor))
            else:
                self._soft[name] = self.cache.wrap_soft(compressor, {"name": f"preloaded {name}"})

    @staticmethod
    def _hard_fingerprint(compressor: Any) -> dict[str, Any]:
        config = {k: v for k, v in compressor.config.to_dict().items() if k not in ("rate", "target_tokens")}
        if compressor.name == "llmlingua2" and not config.get("classifier"):
            config["classifier"] = classifier_source()
        return config

    def hard(self, name: str, rate: float | None = None):
        """The hard compressor ``name``; with ``rate``, a second instance whose own config rate is ``rate``."""
        key = name if rate is None else f"pipeline:{name}@{rate}"
        if key not in self._hard:
            from mmcompress import create_compressor

            # llmlingua2's default is llmlingua's per-chunk rate; an equal-budget comparison needs its global budget
            options = {"budget": "global"} if name == "llmlingua2" else {}
            compressor = create_compressor(name, **options) if rate is None else create_compressor(name, rate=rate, **options)
            self._hard[key] = self.cache.wrap_hard(compressor, self._hard_fingerprint(compressor))
        return self._hard[key]

    def soft(self, name: str):
        if name not in self._soft:
            path = getattr(self.args, name, None)
            source = weights_source(path)
            if path and Path(path, "trainable.safetensors").is_file() and Path(path).parent.joinpath("recipe.yaml").is_file() \
                    and not Path(path, "mmcompress_config.json").is_file():  # a trainer checkpoint of a recipe run
                import yaml
                from safetensors.torch import load_file

                from mmcompress.registry import get_compressor_class

                recipe = yaml.safe_load(Path(path).parent.joinpath("recipe.yaml").read_text())
                cls = get_compressor_class(name)
                compressor = cls(cls.config_class.from_dict(recipe["model"]))
                compressor.load_trainable(load_file(str(Path(path, "trainable.safetensors"))), source=str(path))
            elif path and Path(path, "mmcompress_config.json").is_file():
                from mmcompress.factory import create_compressor

                compressor = create_compressor(str(path))
            else:
                from mmcompress.factory import create_compressor

                compressor = create_compressor(name)
                source = {"path": None, "untrained": name}
            self.notes[name] = soft_note(name, path)
            self._soft[name] = self.cache.wrap_soft(compressor, source)
        return self._soft[name]

    def pipeline(self, method: str):
        """``HARD+SOFT`` as an :class:`mmcompress.Pipeline`: the hard stage at ``--pipeline-hard-rate``, then soft."""
        if method not in self._pipelines:
            from mmcompress import Pipeline

            hard, soft = split_pipeline(method)
            self._pipelines[method] = Pipeline([self.hard(hard, rate=self.args.pipeline_hard_rate), self.soft(soft)])
        return self._pipelines[method]

    def prepare(self, method: str, ex: QAExample, rate: float) -> Prepared:
        self.cache.spent = 0.0
        if self.compress_only and (method == "full" or method in PRESSES):
            return None  # nothing to compress
        prepared = self._prepare(method, ex, rate)
        if prepared is not None:
            prepared.compress_s = self.cache.spent  # as measured when each compression was computed
        return prepared

    def _prepare(self, method: str, ex: QAExample, rate: float) -> Prepared:
        r = self.reader
        device = next(r.model.parameters()).device
        question = r.question_ids(ex)
        if method == "full":
            ids = r.encode(r.head_text(ex.documents))
            t0 = time.perf_counter()
            context = prefill(r.model, torch.tensor([ids], device=device))
            return Prepared(r.model, context, question, 0.0, time.perf_counter() - t0)
        if method in ENCODER_SOFT or (family(method) == "pipeline" and split_pipeline(method)[1] in ENCODER_SOFT):
            return self.prepare_encoder_soft(method, ex, rate)
        if method in HARD or family(method) == "pipeline":
            hard_name, press = (method, None) if method in HARD else split_pipeline(method)
            hard_rate = rate if press is None else math.sqrt(rate)
            from mmcompress.prompt import Prompt

            prompt = Prompt.from_documents(ex.documents, instruction=DEFAULT_INSTRUCTION, question=ex.question)
            result = self.hard(hard_name).compress(prompt, rate=hard_rate)
            if self.compress_only:
                return None
            docs = [s.text for s in result.prompt.text_segments if s.role.value in ("context", "text") and s.text]
            ids = r.encode(r.head_text(docs))
            t0 = time.perf_counter()
            kv_press = None if press is None else create_press(press, rate=math.sqrt(rate))
            context = prefill(r.model, torch.tensor([ids], device=device), kv_press)
            return Prepared(r.model, context, question, 0.0, time.perf_counter() - t0)
        if method in list_presses():
            ids = r.encode(r.head_text(ex.documents))
            t0 = time.perf_counter()
            context = prefill(r.model, torch.tensor([ids], device=device), create_press(method, rate=rate))
            return Prepared(r.model, context, question, 0.0, time.perf_counter() - t0)
        if method in ("gist", "autocompressor"):
            return self.prepare_soft(method, ex, rate)
        raise SystemExit(f"unknown method {method!r}")

    def prepare_soft(self, method: str, ex: QAExample, rate: float) -> Prepared:
        r = self.reader
        compressor = self.soft(method)
        compressor.config.chunk_tokens = max(1, round(compressor.config.num_slots / rate))
        docs_text = "\n\n".join(ex.documents)
        head = r.prefix + DEFAULT_INSTRUCTION
        soft = compressor.encode_spans([docs_text])[0]
        if self.compress_only:
            return None
        from mmcompress.prompt import Role, TextSegment

        t0 = time.perf_counter()
        if method == "gist":
            from mmcompress.soft.gist import stack_row_caches

            layers, position, _ = compressor._row_cache([TextSegment(head, Role.INSTRUCTION), soft])
            context = stack_row_caches(compressor.decoder, [(layers, position)])
            model = compressor.decoder
        else:
            model = compressor.module.llm
            embed = model.get_input_embeddings()
            head_ids = torch.tensor(r.encode(head + "\n\n"), device=compressor.device)
            embeds = torch.cat([embed(head_ids), soft.embeddings.to(embed.weight.dtype)])[None]
            with torch.no_grad():
                context = prefill(model, inputs_embeds=embeds)
        return Prepared(model, context, r.question_ids(ex), 0.0, time.perf_counter() - t0,
                        {"soft_tokens": soft.num_tokens})

    def prepare_encoder_soft(self, method: str, ex: QAExample, rate: float) -> Prepared:
        """icae / kv alone or after a hard stage: ``compress()`` the QA prompt (documents -> one soft span each),
        then the decoder reads the chat prefix + instruction, the spans and the method's ``--soft-task`` marker;
        the question follows in the method's own template, then the chat suffix."""
        from mmcompress.prompt import Prompt, Role
        from mmcompress.results import SoftSegment

        r = self.reader
        if "+" in method:
            compressor = self.pipeline(method)
            stage, soft_rate = compressor.soft_stage, min(1.0, rate / self.args.pipeline_hard_rate)
        else:
            compressor = stage = self.soft(method)
            soft_rate = rate
        stage.config.chunk_tokens = max(1, round(stage.config.num_slots / soft_rate))
        # alone: the documents as one span (as gist / autocompressor); in a pipeline: one span per kept document
        documents = ex.documents if "+" in method else ["\n\n".join(ex.documents)]
        prompt = Prompt.from_documents(documents, instruction=DEFAULT_INSTRUCTION, question=ex.question)
        pieces = compressor.compress(prompt).items[0]
        if self.compress_only:
            return None
        task = self.args.soft_task
        head, _ = stage.split_pieces(pieces, task, None)
        head = [p.replace(text=r.prefix + p.text) if getattr(p, "role", None) == Role.INSTRUCTION else p for p in head]
        question = r.encode(stage.format_question(ex.question, task) + r.suffix)
        model = stage.llm
        with torch.no_grad(), stage.decoder_mode():
            t0 = time.perf_counter()
            if stage.name == "kv":
                from mmcompress.soft.gist import stack_row_caches

                layers = stage.prefix_kv(head)
                context = stack_row_caches(model, [(layers, layers[0][0].shape[-2])])
                context = extend_context(model, context, stage.marker(task)[None].to(stage.device, model.dtype))
            else:
                context = prefill(model, inputs_embeds=stage.decoder_embeddings(head, task, None)[None])
            prefill_s = time.perf_counter() - t0
        soft_tokens = sum(p.num_tokens for p in head if isinstance(p, SoftSegment))
        return Prepared(model, context, question, 0.0, prefill_s, {"soft_tokens": soft_tokens}, stage.decoder_mode)


@torch.no_grad()
def extend_context(model: Any, context: CachedContext, embeds: torch.Tensor) -> CachedContext:
    """Read ``embeds`` ``(B, T, D)`` after ``context`` (at its next positions) into its cache."""
    batch, length = embeds.shape[:2]
    mask = torch.cat([context.cache_mask, context.cache_mask.new_ones(batch, length)], dim=1)
    positions = context.next_position[:, None] + torch.arange(length, device=embeds.device)[None]
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **cache_kwargs(model, context.cache))
    cache = output_cache(out) or context.cache
    return CachedContext(cache, mask, context.next_position + length, [n + length for n in context.context_tokens])


# ------------------------------------------------------------------------------------------------ the run
def answer(systems: Systems, method: str, ex: QAExample, rate: float, data: str, per_entry: int,
           max_new_tokens: int) -> dict[str, Any]:
    """One example through one method at one budget: the row of the table it adds."""
    reader = systems.reader
    p = systems.prepare(method, ex, rate)
    entries = p.context.cache_entries  # before the question and answer are appended
    with p.mode():
        generation = generate_from_cache(p.model, p.context, [p.question], max_new_tokens=max_new_tokens,
                                         eos_token_id=reader.stop, restore=False)
    text = reader.tokenizer.decode(generation.token_ids[0], skip_special_tokens=True).strip()
    full_entries = len(reader.encode(reader.head_text(ex.documents)))
    return {"data": data, "method": method, "family": family(method), "rate": rate, "id": ex.id,
            "context_tokens": full_entries, "kv_entries": entries, "kv_fraction": entries / full_entries,
            "kv_mib": entries * per_entry / 2**20,
            "peak_kv_mib": (entries + len(p.question) + generation.new_tokens) * per_entry / 2**20,
            "compress_s": p.compress_s, "prefill_s": p.prefill_s + generation.prefill_seconds,
            "decode_tok_s": generation.decode_tokens_per_second, "answer": text,
            "em": exact_match(text, ex.answers), "f1": f1_score(text, ex.answers),
            "contains": contains_answer(text, ex.answers),
            "computed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **p.extras}


def row_key(args: argparse.Namespace, data: str, method: str, rate: float, ex: QAExample) -> dict[str, Any]:
    """Everything a row depends on besides the code: data subset, example, method, budget, decoding, weights."""
    parts = method.split("+")
    return {"row": method, "rate": rate, "data": data, "id": ex.id, "question": ex.question, "documents": ex.documents,
            "max_new_tokens": args.max_new_tokens, "soft_task": args.soft_task if set(parts) & set(ENCODER_SOFT) else None,
            "pipeline_hard_rate": args.pipeline_hard_rate if "+" in method else None,
            "weights": {p: weights_source(getattr(args, p, None)) for p in parts if p in SOFT},
            "classifier": classifier_source() if "llmlingua2" in parts else None}


def classifier_source() -> dict[str, Any]:
    """llmlingua2's default registered classifier (it changes when a training run registers a new one)."""
    from mmcompress.hard.llmlingua2 import default_classifier

    path = default_classifier()
    weights = Path(path, "model.safetensors") if path else None
    stat = weights.stat() if weights is not None and weights.is_file() else None
    return {"path": path, "size": stat and stat.st_size, "mtime": stat and stat.st_mtime}


def run(args: argparse.Namespace, save: Any = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from mmcompress.models import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype="float32")
    reader = Reader(lm.model, lm.tokenizer)
    per_entry = kv_bytes_per_entry(lm.model)
    cache = CompressionCache(args.cache)
    row_cache = CompressionCache(Path(args.cache) / "rows" if args.cache else None)
    systems = Systems(reader, args, cache=cache)
    systems.compress_only = args.compress_only
    systems.notes.update(method_notes(args, args.methods))
    rows = []
    for data in args.data:
        examples = load_qa_file(DATA[data], limit=args.n)
        if data == "longdoc":  # whole Wikipedia articles (2k-20k tokens): cut to the first max_doc_tokens for CPU
            for ex in examples:
                ids = reader.encode(ex.documents[0])[: args.max_doc_tokens]
                ex.documents = [reader.tokenizer.decode(ids)]
        elif args.max_docs and data == "multidoc":  # the gold paragraph and the first distractors, in order
            for ex in examples:
                keep = sorted({ex.gold_index} | set([i for i in range(len(ex.documents)) if i != ex.gold_index][: args.max_docs - 1]))
                ex.documents = [ex.documents[i] for i in keep]
        for method in args.methods:
            rates = [1.0] if method == "full" else args.rates
            for rate in rates:
                t_method, hits, reused = time.perf_counter(), cache.hits, row_cache.hits
                for ex in examples:
                    if args.compress_only:
                        systems.prepare(method, ex, rate)
                        continue
                    compute = lambda: answer(systems, method, ex, rate, data, per_entry, args.max_new_tokens)  # noqa: E731
                    rows.append(row_cache.get(row_key(args, data, method, rate, ex), compute) if args.reuse_rows
                                else compute())
                print(f"{data} {method} @ {rate}: {time.perf_counter() - t_method:.0f}s "
                      f"({cache.hits - hits} cached compressions, {row_cache.hits - reused} reused rows)", flush=True)
                if save is not None:
                    save(rows, systems.notes)  # a run cut short by its time limit keeps what it finished
    return rows, systems.notes


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["method"], row["rate"]), []).append(row)
    table = []
    for (data, method, rate), group in groups.items():
        mean = lambda k: float(np.mean([g[k] for g in group]))  # noqa: E731
        table.append({"data": data, "method": method, "family": group[0]["family"], "budget": rate, "n": len(group),
                      "kv_fraction": mean("kv_fraction"), "kv_mib": mean("kv_mib"), "peak_kv_mib": mean("peak_kv_mib"),
                      "em": mean("em"), "f1": mean("f1"), "contains": mean("contains"),
                      "compress_s": mean("compress_s"), "prefill_s": mean("prefill_s"),
                      "decode_tok_s": mean("decode_tok_s")})
    order = {"none": 0, "hard": 1, "pipeline": 2, "soft": 3, "attention": 4}
    return sorted(table, key=lambda t: (t["data"], order.get(t["family"], 9), t["method"], -t["budget"]))


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Equal-budget QA benchmark, reader SmolLM2-135M-Instruct, machine: {meta['machine']}.", "",
             f"Answers up to {meta['max_new_tokens']} tokens, greedy, one question at a time. Subsets (CPU budget): "
             + "; ".join(f"{d}: {', '.join(f'{k}={v}' for k, v in cfg.items())}" for d, cfg in
                         sorted(meta.get("datasets", {}).items()))
             + " (multidoc: the gold paragraph and the first distractors; longdoc: each article's first tokens).", ""]
    if meta.get("computed_utc"):
        first, last = meta["computed_utc"]
        lines += [f"Rows computed between {first} and {last} UTC (a row or compression is reused across runs when "
                  "nothing it depends on changed: `--reuse-rows`, `--cache`); 'compress s' is the time measured when "
                  "the compression was first computed, 'prefill s' and 'decode tok/s' when the row was. The machine "
                  "was shared with other jobs: compare times within a column, roughly.", ""]
    for name, note in sorted(meta.get("notes", {}).items()):
        lines.append(f"- {name}: {note}")
    lines += ["", "| data | n | method | family | budget | KV kept | KV MiB | peak KV MiB | EM | F1 | contains | "
              "compress s | prefill s | decode tok/s |", "|" + " --- |" * 14]
    for t in table:
        lines.append(f"| {t['data']} | {t['n']} | {t['method']} | {t['family']} | {t['budget']:.2f} | {t['kv_fraction']:.3f} | "
                     f"{t['kv_mib']:.2f} | {t['peak_kv_mib']:.2f} | {t['em']:.3f} | {t['f1']:.3f} | "
                     f"{t['contains']:.3f} | {t['compress_s']:.3f} | {t['prefill_s']:.3f} | {t['decode_tok_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, machine: str) -> None:
    """Answer F1 against the KV cache the answer is decoded from: one panel per dataset, one line per method
    (colour per method, marker and line style per family), one shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({t["data"] for t in table})
    methods = list(dict.fromkeys(t["method"] for t in table))
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    styles = {"hard": ("-", "o"), "attention": ("--", "^"), "soft": (":", "s"), "pipeline": ("-.", "D"), "none": ("", "*")}
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.6), squeeze=False)
    handles = {}
    for ax, data in zip(axes[0], datasets):
        rows = [t for t in table if t["data"] == data]
        for method in dict.fromkeys(t["method"] for t in rows):
            pts = sorted((t["kv_mib"], t["f1"]) for t in rows if t["method"] == method)
            family = next(t["family"] for t in rows if t["method"] == method)
            line, marker = styles.get(family, ("-", "o"))
            (h,) = ax.plot(*zip(*pts), marker=marker, markersize=13 if family == "none" else 5, linestyle=line,
                           color="black" if family == "none" else colours[method], label=f"{method} ({family})")
            handles.setdefault(h.get_label(), h)
        n = max(t["n"] for t in rows)
        ax.set_xlabel("KV cache at decode start (MiB)")
        ax.set_ylabel("answer F1")
        ax.set_title(f"{data} (n={n})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle(f"Answer quality vs KV memory at 50/25/10% budgets, SmolLM2-135M-Instruct reader\n{machine}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * math.ceil(len(handles) / 5), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["multidoc", "longdoc"], choices=sorted(DATA))
    p.add_argument("--methods", nargs="+", default=["full", "random", "selective_context", "knorm", "snapkv",
                                                     "streaming_llm", "sliding_window"])
    p.add_argument("--rates", nargs="+", type=float, default=[0.5, 0.25, 0.1])
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--max-doc-tokens", type=int, default=1024)
    p.add_argument("--max-docs", type=int, default=0, help="multidoc: keep the gold + (k-1) distractors (0: all 10)")
    p.add_argument("--gist", default="runs/gist-cpu/final", help="saved gist compressor (absent: untrained)")
    p.add_argument("--autocompressor", default="runs/autocompressor-cpu/final")
    p.add_argument("--icae", default="runs/soft/icae", help="saved icae compressor folder (absent: untrained)")
    p.add_argument("--kv", default="runs/soft/kv", help="saved kv (500xCompressor) folder (absent: untrained)")
    p.add_argument("--soft-task", default="qa", choices=["qa", "lm", "ae"],
                   help="icae / kv: the task marker read after the soft prompt (qa: [FT] and the QA template)")
    p.add_argument("--pipeline-hard-rate", type=float, default=0.5, help="HARD+SOFT pipelines: the hard stage's rate")
    p.add_argument("--cache", default="runs/equal_budget_cache", help="compressions reused across runs ('' = none)")
    p.add_argument("--compress-only", action="store_true",
                   help="only compute and cache the compressions (no reader, nothing written but the cache)")
    p.add_argument("--reuse-rows", action="store_true",
                   help="reuse rows computed by earlier runs with the same data, method, budget, decoding and weights "
                        "(kept in --cache/rows); only new or changed rows are computed")
    p.add_argument("--fresh", action="store_true", help="the table holds this run's rows only (no earlier rows)")
    p.add_argument("--out", default=str(RESULTS / "equal_budget"))
    p.add_argument("--threads", type=int, default=1)  # 2 threads on a shared 2-core box are ~5x slower
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.is_file() and not args.fresh else \
        {"rows": [], "meta": {"notes": {}}}
    t0 = time.perf_counter()

    def save(rows: list[dict[str, Any]], notes: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any], set]:
        done = {(r["data"], r["method"], r["rate"]) for r in rows}
        all_rows = [r for r in previous["rows"] if (r["data"], r["method"], r["rate"]) not in done] + rows
        settings = {d: ({"n": args.n, "max_docs": args.max_docs or 10} if d == "multidoc" else
                        {"n": args.n, "max_doc_tokens": args.max_doc_tokens}) for d in args.data}
        stamps = sorted(r["computed_utc"] for r in all_rows if r.get("computed_utc"))
        meta = {"machine": machine(), "max_new_tokens": args.max_new_tokens,
                "computed_utc": [stamps[0], stamps[-1]] if stamps else None,
                "datasets": {**previous["meta"].get("datasets", {}), **settings},
                "notes": {**previous["meta"].get("notes", {}), **notes},
                "commands": sorted(set(previous["meta"].get("commands", [])) | {" ".join(sys.argv[1:])})}
        table = aggregate(all_rows)
        json_path.write_text(json.dumps({"meta": meta, "table": table, "rows": all_rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(table, meta))
        plot(table, out.with_suffix(".png"), machine())
        return table, meta, {(d, m) for d, m, _ in done}

    if args.compress_only:
        with torch.no_grad():
            run(args)
        print(f"{time.perf_counter() - t0:.0f}s; compressions cached in {args.cache}")
        return
    with torch.no_grad():
        rows, notes = run(args, save)
    table, meta, done = save(rows, notes)
    print(markdown([t for t in table if (t["data"], t["method"]) in done], meta))
    print(f"{time.perf_counter() - t0:.0f}s; wrote {json_path}, .md, .png")


if __name__ == "__main__":
    main()
