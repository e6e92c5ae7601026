"""Load test of ``mmcompress serve`` on loopback: requests per second and p50/p95 latency, bounded in time.

    PYTHONPATH=. python benchmarks/serve_load.py [--requests 48] [--model-requests 8] [--concurrency 1,8]

For each method, the service runs as its own process (``python -m mmcompress serve`` on a free loopback port, the
model loaded once, SmolLM2-135M as the scorer) with a local echo upstream (a real HTTP server in this process that
answers at once, so the proxy rows measure compression plus forwarding, not an LLM). For each concurrency level,
``--requests`` requests go to ``POST /v1/compress`` (one paragraph of examples/data/telescope.txt with a question,
rate 0.5) and as many to ``POST /v1/chat/completions`` (a 4-message chat whose two middle turns are paragraphs),
``concurrency`` at a time from an asyncio httpx client. ``random`` (tokenizer only) measures the service itself,
both endpoints; ``selective_context`` (a SmolLM2 forward pass per sentence) sends ``--model-requests`` requests to
``/v1/compress`` only, to keep the run short on a small CPU. Results are written after each method. Latency is
the client's, from send to full response.
Writes benchmarks/results/serve_load.{json,md}.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.common import write_results  # noqa: E402
from mmcompress.serve.local import EchoUpstream, free_port  # noqa: E402

QUESTION = "Who built the first practical reflecting telescope?"


def paragraphs() -> list[str]:
    text = (REPO / "examples" / "data" / "telescope.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def request_bodies(endpoint: str, n: int) -> list[dict]:
    paras = paragraphs()
    if endpoint == "/v1/compress":
        return [{"prompt": paras[i % len(paras)], "question": QUESTION, "rate": 0.5} for i in range(n)]
    return [{"model": "echo", "messages": [
        {"role": "system", "content": "Answer from the conversation."},
        {"role": "user", "content": paras[i % len(paras)]},
        {"role": "assistant", "content": paras[(i + 1) % len(paras)]},
        {"role": "user", "content": QUESTION}]} for i in range(n)]


async def load(base_url: str, endpoint: str, bodies: list[dict], concurrency: int) -> dict:
    import httpx

    latencies, errors, sizes = [], 0, []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        async def one(body):
            nonlocal errors
            async with gate:
                t0 = time.perf_counter()
                r = await client.post(endpoint, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
                elif endpoint == "/v1/compress":
                    sizes.append(r.json()["timings"]["batch_size"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"requests": len(bodies), "errors": errors, "req_per_s": len(bodies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_batch": float(np.mean(sizes)) if sizes else None}


def start_server(method: str, port: int, upstream: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
    cmd = [sys.executable, "-m", "mmcompress", "serve", "--port", str(port), "--method", method, "--rate", "0.5",
           "--upstream-base-url", upstream, "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env)


def wait_ready(proc: subprocess.Popen, base_url: str, timeout: float = 120) -> float:
    import httpx

    t0 = time.perf_counter()
    while True:
        try:
            httpx.get(base_url + "/health", timeout=2).raise_for_status()
            return time.perf_counter() - t0
        except httpx.HTTPError:
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the server did not start (exit code {proc.poll()})") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per endpoint and concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated numbers of requests in flight")
    parser.add_argument("--model-requests", type=int, default=4, help="requests per level for model-scored methods")
    parser.add_argument("--methods", default="random,selective_context")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the server (0: torch's default)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with EchoUpstream() as upstream:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            proc = start_server(method, port, upstream.base_url, args.threads)
            try:
                startup = wait_ready(proc, base_url)
                tokenizer_only = method == "random"
                n = args.requests if tokenizer_only else args.model_requests
                for endpoint in ("/v1/compress", "/v1/chat/completions")[: 2 if tokenizer_only else 1]:
                    asyncio.run(load(base_url, endpoint, request_bodies(endpoint, 2), 1))  # warm-up, not counted
                    for level in levels:
                        stats = asyncio.run(load(base_url, endpoint, request_bodies(endpoint, n), level))
                        rows.append({"method": method, "endpoint": endpoint, "concurrency": min(level, n), **stats,
                                     "startup_s": startup})
                        print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            data = write(args.out, rows)  # after each method, so that a cut-off run keeps what it measured
    return data


def write(out: str, rows: list[dict]) -> dict:
    notes = ("Loopback only; the service is its own process, the client and the echo upstream share this one. "
             "Latency is the client's (send to full response); mean_batch is the mean number of requests compressed "
             "together (from /v1/compress responses). startup_s includes loading SmolLM2 once.")
    return write_results(out, "mmcompress serve: load on loopback", rows, notes=notes,
                         columns=["method", "endpoint", "concurrency", "requests", "errors", "req_per_s", "p50_ms",
                                  "p95_ms", "mean_batch", "startup_s"])


if __name__ == "__main__":
    main()
