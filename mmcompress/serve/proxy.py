"""The OpenAI-compatible compressing proxy: ``POST /v1/chat/completions``.

The conversation is compressed before it is forwarded to ``{upstream_base_url}/chat/completions``: the system (and
developer) messages and the last user turn are kept verbatim; earlier user and assistant turns with plain text are
compressed under one budget. Tool calls, tool results and messages with non-text parts are kept as they are. The
request is otherwise forwarded unchanged (streaming included) and the upstream's answer comes back unchanged, with
the accounting in headers:

    X-MMCompress-Method, X-MMCompress-Origin-Tokens, X-MMCompress-Compressed-Tokens, X-MMCompress-Rate,
    X-MMCompress-Seconds

Per request, ``"mmcompress": {"method": ..., "rate": ..., "target_tokens": ...}`` in the body (the OpenAI client's
``extra_body``; removed before forwarding) or the headers ``X-MMCompress-Method`` / ``-Rate`` / ``-Target-Tokens``
override the server's defaults; ``rate: 1`` forwards the conversation untouched.
"""
from __future__ import annotations

import json
import time
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from ..prompt import Prompt, Role, TextSegment
from .settings import ServeError, ServeSettings, error_response

OPTION_HEADERS = {"method": "x-mmcompress-method", "rate": "x-mmcompress-rate",
                  "target_tokens": "x-mmcompress-target-tokens"}
FORWARDED_HEADERS = ("authorization", "openai-organization", "openai-project")


def conversation_prompt(messages: list[Any]) -> Prompt | None:
    """The compressible view of a chat: one text segment per plain-text message, ``meta["message"]`` its index;
    None when there is nothing to compress."""
    if not isinstance(messages, list) or not messages:
        raise ServeError("messages must be a non-empty list of {'role', 'content'} objects", 422)
    for i, m in enumerate(messages):
        has_content = isinstance(m, dict) and ("content" in m or "tool_calls" in m)
        if not has_content or not isinstance(m.get("role"), str):
            raise ServeError(f"messages[{i}] must be an object with a 'role' and a 'content'", 422)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    segments = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, str):
            continue  # parts, images, tool calls: forwarded as they are
        if m["role"] in ("system", "developer"):
            role, keep = Role.INSTRUCTION, True
        elif i == last_user:
            role, keep = Role.QUESTION, True
        else:
            role, keep = Role.CONTEXT, m["role"] not in ("user", "assistant") or bool(m.get("tool_calls"))
        segments.append(TextSegment(content, role=role, keep=keep, meta={"message": i}))
    if not any(s.compressible and s.text.strip() for s in segments):
        return None
    return Prompt(tuple(segments))


def _options(body: dict[str, Any], request: Request) -> dict[str, Any]:
    options = body.pop("mmcompress", None) or {}
    if not isinstance(options, dict) or set(options) - set(OPTION_HEADERS):
        raise ServeError(f"'mmcompress' must be an object with some of {sorted(OPTION_HEADERS)}", 422)
    for key, header in OPTION_HEADERS.items():
        if header in request.headers and key not in options:
            options[key] = request.headers[header]
    try:
        if options.get("rate") is not None:
            options["rate"] = float(options["rate"])
            if not 0 < options["rate"] <= 1:
                raise ValueError
        if options.get("target_tokens") is not None:
            options["target_tokens"] = int(options["target_tokens"])
            if options["target_tokens"] < 1:
                raise ValueError
    except (TypeError, ValueError):
        raise ServeError("mmcompress rate must be a number in (0, 1] and target_tokens a positive integer",
                         422) from None
    if options.get("rate") is not None and options.get("target_tokens") is not None:
        raise ServeError("give mmcompress rate or target_tokens, not both", 422)
    return options


def add_proxy_routes(app: FastAPI, settings: ServeSettings, state: dict[str, Any]) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not settings.upstream_base_url:
            return error_response(503, "this server has no upstream: start it with --upstream-base-url", "server_error")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(400, f"the request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return error_response(422, "the request body must be a JSON object")
        options = _options(body, request)
        prompt = conversation_prompt(body.get("messages"))
        headers = {"X-MMCompress-Method": "none", "X-MMCompress-Seconds": "0"}
        if prompt is not None and options.get("rate") != 1.0:
            started = time.perf_counter()
            result, _ = await app.state.compress(prompt, options.get("method"), options.get("rate"),
                                                 options.get("target_tokens"))
            messages = [dict(m) for m in body["messages"]]
            new_text = {i: "" for i in (s.meta["message"] for s in prompt.segments)}
            for seg in result.prompt.segments:
                new_text[seg.meta["message"]] += seg.text
            for i, text in new_text.items():
                messages[i]["content"] = text
            body["messages"] = messages
            headers = {"X-MMCompress-Method": result.method, "X-MMCompress-Origin-Tokens": str(result.origin_tokens),
                       "X-MMCompress-Compressed-Tokens": str(result.compressed_tokens),
                       "X-MMCompress-Rate": f"{result.rate:.6f}",
                       "X-MMCompress-Seconds": f"{time.perf_counter() - started:.6f}"}
        forward = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        if settings.upstream_api_key:
            forward["authorization"] = f"Bearer {settings.upstream_api_key}"
        url = settings.upstream_base_url.rstrip("/") + "/chat/completions"
        client: httpx.AsyncClient = state["client"]
        try:
            upstream = await client.send(client.build_request("POST", url, json=body, headers=forward), stream=True)
        except httpx.HTTPError as e:
            return error_response(502, f"the upstream {url} could not be reached: {type(e).__name__}: {e}",
                                  "upstream_error")
        media_type = upstream.headers.get("content-type", "application/json")
        if body.get("stream") and upstream.status_code < 400:
            return StreamingResponse(upstream.aiter_bytes(), status_code=upstream.status_code, headers=headers,
                                     media_type=media_type, background=BackgroundTask(upstream.aclose))
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(content, status_code=upstream.status_code, headers=headers, media_type=media_type)
