"""``mmcompress serve``: real HTTP on loopback. The service runs in-process (uvicorn in a thread) or as a subprocess,
the upstream is a real local HTTP server (EchoUpstream), and the proxy is called with the official openai client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from mmcompress.serve.local import EchoUpstream, free_port, serve_in_thread  # noqa: E402

pytestmark = pytest.mark.timeout(300)

LONG = ("Paris is the capital and most populous city of France. The river flows to the sea through the city. "
        "Super Bowl 50 was an American football game to determine the champion of the National Football League. ")
CHAT = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": LONG * 2},
    {"role": "assistant", "content": LONG},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(base URL, upstream) of a service running the random method on the tiny Llama, with an echo upstream."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import make_bpe_tokenizer, make_llama

    from mmcompress.serve.app import ServeSettings, create_app

    folder = tmp_path_factory.mktemp("serve-tiny")
    make_llama(make_bpe_tokenizer(), folder)
    with EchoUpstream() as upstream:
        settings = ServeSettings(method="random", rate=0.5, config={"model": str(folder)},
                                 upstream_base_url=upstream.base_url, max_wait_ms=20)
        with serve_in_thread(create_app(settings)) as base_url:
            yield base_url, upstream, folder


def test_compress_prompt_documents_and_messages(service):
    base_url, _, _ = service
    with httpx.Client(base_url=base_url, timeout=60) as client:
        r = client.post("/v1/compress", json={"prompt": LONG, "question": "Which city?", "rate": 0.5})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["method"] == "random" and out["text"].endswith("Which city?")
        assert out["compressed_tokens"] < out["origin_tokens"]
        assert out["rate"] == pytest.approx(out["compressed_tokens"] / out["origin_tokens"])
        assert {"total", "queue", "batch", "batch_size", "request"} <= set(out["timings"])

        r = client.post("/v1/compress", json={"documents": [LONG, LONG], "instruction": "Answer briefly.",
                                              "target_tokens": 40})
        assert r.status_code == 200, r.text
        # (random token units re-tokenise to a little more than the target: a property of the method, not the service)
        assert r.json()["compressed_tokens"] < r.json()["origin_tokens"] / 2
        assert r.json()["text"].startswith("Answer briefly.")

        r = client.post("/v1/compress", json={"messages": CHAT, "rate": 0.6, "method": "random-token"})
        assert r.status_code == 200, r.text
        messages = r.json()["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[0] == CHAT[0] and messages[-1] == CHAT[-1]  # system prompt and last user turn kept
        assert len(messages[1]["content"]) < len(CHAT[1]["content"])


@pytest.mark.parametrize("payload, status, words", [
    (b'{"prompt": "abc"', 422, "JSON"),
    (b'[1, 2]', 422, "dictionary"),
    (json.dumps({"prompt": LONG, "colour": "red"}).encode(), 422, "colour"),
    (json.dumps({"prompt": LONG, "rate": 1.5}).encode(), 422, "rate"),
    (json.dumps({"prompt": LONG, "rate": 0.5, "target_tokens": 5}).encode(), 422, "not both"),
    (json.dumps({"prompt": LONG, "documents": [LONG]}).encode(), 422, "exactly one"),
    (json.dumps({}).encode(), 422, "exactly one"),
    (json.dumps({"prompt": "   "}).encode(), 400, "empty"),
    (json.dumps({"prompt": LONG, "method": "no_such"}).encode(), 400, "unknown method"),
    (json.dumps({"prompt": LONG, "method": "/etc/passwd"}).encode(), 400, "unknown method"),
    (json.dumps({"prompt": LONG, "method": "icae"}).encode(), 400, "soft method"),
    (json.dumps({"prompt": LONG, "question": "Which city of France is the capital?", "target_tokens": 2}).encode(),
     400, "budget"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
     .encode(), 422, "text only"),
])
def test_bad_requests_get_4xx_with_a_message(service, payload, status, words):
    base_url, _, _ = service
    r = httpx.post(base_url + "/v1/compress", content=payload, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower(), message


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service):
    base_url, _, _ = service
    prompts = [f"Request {i}: " + LONG for i in range(12)]

    def call(i):
        body = ({"prompt": prompts[i], "rate": 0.6, "question": f"Question number {i}?"} if i != 5 else
                {"prompt": prompts[i], "target_tokens": 1, "question": "A question longer than one token?"})
        return httpx.post(base_url + "/v1/compress", json=body, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12)))
    assert responses[5].status_code == 400  # one bad request in a batch fails alone
    good = [r.json() for i, r in enumerate(responses) if i != 5]
    assert all(r.status_code == 200 for i, r in enumerate(responses) if i != 5)
    # each answer is its own request's: the kept question says which
    assert all(g["text"].endswith(f"Question number {i}?") for i, g in zip([i for i in range(12) if i != 5], good))
    assert max(g["timings"]["batch_size"] for g in good) > 1
    assert httpx.get(base_url + "/health").json()["largest_batch"] > 1


def test_openai_client_through_the_proxy(service):
    base_url, upstream, _ = service
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
    before = len(upstream.requests)
    raw = client.chat.completions.with_raw_response.create(model="echo-model", messages=CHAT,
                                                           extra_body={"mmcompress": {"rate": 0.5}})
    completion = raw.parse()
    forwarded = upstream.requests[before]
    assert "mmcompress" not in forwarded and forwarded["model"] == "echo-model"
    assert upstream.headers[before]["authorization"] == "Bearer sk-test"
    sent = forwarded["messages"]
    assert sent[0] == CHAT[0] and sent[-1] == CHAT[-1]
    assert len(sent[1]["content"]) < len(CHAT[1]["content"]) and len(sent[2]["content"]) < len(CHAT[2]["content"])
    assert completion.choices[0].message.content == EchoUpstream.reply_text(forwarded)  # the upstream's answer
    origin = int(raw.headers["x-mmcompress-origin-tokens"])
    compressed = int(raw.headers["x-mmcompress-compressed-tokens"])
    assert raw.headers["x-mmcompress-method"] == "random" and compressed < origin
    assert float(raw.headers["x-mmcompress-rate"]) == pytest.approx(compressed / origin, abs=1e-5)

    # streaming: the same answer arrives in chunks, with the accounting in the headers
    raw = client.chat.completions.with_raw_response.create(model="echo-model", messages=CHAT, stream=True)
    assert int(raw.headers["x-mmcompress-compressed-tokens"]) < int(raw.headers["x-mmcompress-origin-tokens"])
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3 and text == EchoUpstream.reply_text(upstream.requests[-1])
    assert chunks[-1].choices[0].finish_reason == "stop"

    # a per-request rate of 1 forwards the conversation untouched
    client.chat.completions.create(model="echo-model", messages=CHAT, extra_headers={"X-MMCompress-Rate": "1"})
    assert upstream.requests[-1]["messages"] == CHAT

    # upstream errors come back as they are; bad options are the proxy's 4xx
    with pytest.raises(openai.NotFoundError, match="model not found"):
        client.chat.completions.create(model="missing-model", messages=CHAT)
    with pytest.raises(openai.UnprocessableEntityError, match="rate"):
        client.chat.completions.create(model="echo-model", messages=CHAT, extra_body={"mmcompress": {"rate": 3}})
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        client.chat.completions.create(model="echo-model", messages=[])


def test_proxy_without_a_reachable_upstream_says_so(service):
    from mmcompress.serve.app import ServeSettings, create_app

    _, _, folder = service
    settings = ServeSettings(method="random", config={"model": str(folder)},
                             upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    with serve_in_thread(create_app(settings)) as base_url:
        r = httpx.post(base_url + "/v1/chat/completions", json={"model": "m", "messages": CHAT}, timeout=60)
        assert r.status_code == 502 and "could not be reached" in r.json()["error"]["message"]
        r = httpx.post(base_url + "/v1/chat/completions", content=b"{not json", timeout=60)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_cli_serve_as_a_subprocess(service):
    _, upstream, folder = service
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mmcompress", "serve", "--port", str(port), "--method", "random", "--rate", "0.4",
           "--model", str(folder), "--upstream-base-url", upstream.base_url, "--log-level", "warning"]
    bad = subprocess.run(cmd[:-4] + ["--rate", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "rate" in bad.stderr
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.25)
        assert health["method"] == "random" and health["rate"] == 0.4
        r = httpx.post(f"http://127.0.0.1:{port}/v1/compress", json={"prompt": LONG}, timeout=60).json()
        assert r["rate"] < 0.6
    finally:
        proc.terminate()
        proc.wait(timeout=30)
