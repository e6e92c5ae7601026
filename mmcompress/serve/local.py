"""Running the service inside a Python process, and a stand-in upstream for trying the proxy without an LLM.

    with serve_in_thread(create_app(settings)) as base_url:        # e.g. "http://127.0.0.1:53211"
        httpx.post(base_url + "/v1/compress", json={"prompt": text})

    with EchoUpstream() as upstream:                              # a real HTTP server on a free loopback port
        settings = ServeSettings(upstream_base_url=upstream.base_url)

:class:`EchoUpstream` answers ``POST /v1/chat/completions`` like an OpenAI-compatible server (JSON, or server-sent
events when ``stream`` is true) with a reply saying how many messages and characters it received, and records every
request body (``.requests``), so a test or a load test can see what the proxy forwarded.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int | None = None,
                    start_timeout: float = 300.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread until the block ends; yields its base URL."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="mmcompress-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the server did not start within {start_timeout} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class EchoUpstream:
    """A minimal OpenAI-compatible chat server on loopback that records what it receives."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                upstream.requests.append(body)
                upstream.headers.append({k.lower(): v for k, v in self.headers.items()})
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if body.get("model") == "missing-model":
                    return self._json(404, {"error": {"message": "model not found", "type": "invalid_request_error"}})
                reply = EchoUpstream.reply_text(body)
                if body.get("stream"):
                    return self._stream(body, reply)
                self._json(200, {
                    "id": "chatcmpl-echo", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "echo"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                })

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], reply: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                words = reply.split(" ")
                pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
                for i, piece in enumerate(pieces + [None]):
                    delta = {"content": piece} if piece is not None else {}
                    chunk = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": body.get("model", "echo"),
                             "choices": [{"index": 0, "delta": ({"role": "assistant"} if i == 0 else {}) | delta,
                                          "finish_reason": None if piece is not None else "stop"}]}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{host}:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo-upstream", daemon=True)

    @staticmethod
    def reply_text(body: dict[str, Any]) -> str:
        messages = body.get("messages") or []
        chars = sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str))
        return f"I received {len(messages)} messages with {chars} characters in all."

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
