"""The HTTP service (``pip install 'mmcompress[serve]'``; run with ``mmcompress serve``).

- ``POST /v1/compress``: ``prompt`` | ``documents`` | ``messages``, with ``question``, ``instruction``, ``method``,
  ``rate`` or ``target_tokens`` -> ``text`` (or ``messages``), token counts, rate and timings.
- ``POST /v1/chat/completions``: an OpenAI-compatible proxy that compresses the conversation and forwards it to
  ``upstream_base_url`` (see :mod:`mmcompress.serve.proxy`).
- ``GET /health``: the default method and the sizes of the recent batches.

Models are loaded once, at start-up for the default method and on first use for another one; all model work runs
through one :class:`~mmcompress.serve.batcher.MicroBatcher`. Bad input gets a 4xx with an OpenAI-style
``{"error": {"message": ...}}`` body, never a 500.
"""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any

from ..extras import require

require("fastapi", "mmcompress serve")
require("httpx", "mmcompress serve")

import httpx  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402

from ..errors import ConfigError, MMCompressError  # noqa: E402
from ..prompt import Prompt  # noqa: E402
from ..results import CompressedPrompt  # noqa: E402
from .batcher import BatchInfo, MicroBatcher  # noqa: E402
from .settings import ServeError, ServeSettings, error_response  # noqa: E402,F401  (re-exported)

WARM_UP_TEXT = "Warming up the model once at start-up, so that the first request does not pay for loading it."


class CompressRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    documents: list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    question: str | None = None
    instruction: str | None = None
    method: str | None = None
    rate: float | None = Field(default=None, gt=0, le=1)
    target_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> CompressRequest:
        given = [k for k in ("prompt", "documents", "messages") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, documents, messages (got {given or 'none'})")
        if self.rate is not None and self.target_tokens is not None:
            raise ValueError("give rate or target_tokens, not both")
        return self


class Compressors:
    """Compressors by method name, built once; only hard methods, by registered or shipped-config name (never a
    path: a request must not make the server read files)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.default = self.check_method(settings.method)
        self._loaded: dict[str, Any] = {self.default: self._build(self.default, settings.config)}

    def get(self, method: str | None) -> tuple[str, Any]:
        name = self.check_method(method) if method else self.default
        if name not in self._loaded:
            from ..registry import get_compressor_class

            if len(self._loaded) >= self.settings.max_methods:  # forget the oldest non-default one
                oldest = next(k for k in self._loaded if k != self.default)
                del self._loaded[oldest]
            fields = set(get_compressor_class(self._method_of(name)).config_class.field_names())
            self._loaded[name] = self._build(name, {k: v for k, v in self.settings.config.items() if k in fields})
        return name, self._loaded[name]

    @staticmethod
    def _method_of(name: str) -> str:
        from ..factory import list_configs, load_config_file

        configs = list_configs()
        return load_config_file(configs[name])[0] if name in configs else name.replace("-", "_")

    @classmethod
    def check_method(cls, name: str) -> str:
        """The method's key, or a ServeError when it is unknown, a path, or not a text method."""
        from ..factory import list_configs
        from ..registry import COMPRESSORS

        key = name.strip().lower().replace("-", "_")
        if key in COMPRESSORS:
            family = getattr(COMPRESSORS.get(key), "family", "")
            name = key
        elif name in list_configs():
            family = getattr(COMPRESSORS.get(cls._method_of(name)), "family", "")
        else:
            hard = [n for n in COMPRESSORS.names() if getattr(COMPRESSORS.get(n), "family", "") == "hard"]
            raise ServeError(f"unknown method {name!r}; the service takes a registered hard method "
                             f"({', '.join(hard)}) or a shipped config name")
        if family != "hard":
            raise ServeError(f"method {name!r} is a {family} method; the service compresses text (hard methods)")
        return name

    @staticmethod
    def _build(name: str, config: dict[str, Any]):
        from ..factory import create_compressor

        return create_compressor(name, **config)


def build_prompt(body: CompressRequest) -> Prompt:
    if body.messages is not None:
        for i, message in enumerate(body.messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str) and not (isinstance(content, list) and all(
                    isinstance(p, dict) and p.get("type") == "text" for p in content)):
                raise ServeError(f"messages[{i}].content must be a string or a list of text parts "
                                 "(the service compresses text only)", 422)
    source = body.prompt if body.prompt is not None else body.documents if body.documents is not None else body.messages
    if body.documents is not None and not body.documents:
        raise ServeError("documents is empty", 422)
    return Prompt.coerce(source, question=body.question, instruction=body.instruction)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application (models are loaded when it starts)."""
    settings = settings or ServeSettings()
    state: dict[str, Any] = {}

    def run_batch(key, prompts):
        name, rate, target_tokens = key
        return state["compressors"].get(name)[1].compress_batch(prompts, rate=rate, target_tokens=target_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(run_batch, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000)
        await batcher.start()
        compressors = await batcher.call(Compressors, settings)
        await batcher.call(lambda: compressors.get(None)[1].compress(WARM_UP_TEXT, rate=settings.rate))
        state.update(batcher=batcher, compressors=compressors)
        async with httpx.AsyncClient(timeout=settings.upstream_timeout) as client:
            state["client"] = client
            yield
        await batcher.stop()

    app = FastAPI(title="mmcompress", lifespan=lifespan)
    app.state.settings, app.state.mmcompress = settings, state

    async def compress(prompt: Prompt, method: str | None, rate: float | None,
                       target_tokens: int | None) -> tuple[CompressedPrompt, BatchInfo]:
        """Compress one prompt through the batcher (the method is loaded on the batch thread if new)."""
        name, _ = state["compressors"].get(method)  # builds a new method's compressor; its model loads in the batch
        if rate is None and target_tokens is None:
            rate = settings.rate
        return await state["batcher"].submit((name, rate, target_tokens), prompt)

    app.state.compress = compress

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(MMCompressError)
    async def _refused(request: Request, exc: MMCompressError):
        return error_response(getattr(exc, "status", 400), str(exc))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        sizes = state["batcher"].batch_sizes
        return {"status": "ok", "method": state["compressors"].default, "rate": settings.rate,
                "batches": len(sizes), "largest_batch": max(sizes, default=0),
                "upstream": settings.upstream_base_url}

    @app.post("/v1/compress")
    async def compress_endpoint(body: CompressRequest) -> dict[str, Any]:
        started = time.perf_counter()
        prompt = build_prompt(body)
        result, info = await compress(prompt, body.method, body.rate, body.target_tokens)
        out: dict[str, Any] = {"method": result.method}
        if body.messages is not None:
            out["messages"] = result.to_messages()
        else:
            out["text"] = result.text
        out.update(origin_tokens=result.origin_tokens, compressed_tokens=result.compressed_tokens,
                   rate=result.rate, ratio=result.ratio if result.compressed_tokens else None,
                   timings={**{k: round(v, 6) for k, v in result.timings.items()},
                            "queue": round(info.queue_seconds, 6), "batch": round(info.batch_seconds, 6),
                            "batch_size": info.size, "request": round(time.perf_counter() - started, 6)})
        return out

    from .proxy import add_proxy_routes

    add_proxy_routes(app, settings, state)
    return app


def check_settings(settings: ServeSettings) -> None:
    """Fail on bad settings before any model is loaded."""
    from ..budget import check_rate

    check_rate(settings.rate)
    if settings.upstream_base_url and not settings.upstream_base_url.startswith(("http://", "https://")):
        raise ConfigError("--upstream-base-url must start with http:// or https://, "
                          f"got {settings.upstream_base_url!r}")
    if settings.max_batch < 1 or settings.max_wait_ms < 0:
        raise ConfigError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    Compressors.check_method(settings.method)  # the same check as a request's method
