"""The published llmlingua 0.2.2 as a long-lived worker, so a benchmark can time it call by call next to ours.

``../shared/peer/llmlingua_reference.py setup`` builds the package's own virtual environment (transformers 4.44) and
a transformers-4-readable SmolLM2 folder; its ``run`` times whole files in one go. Here the same environment serves
one call at a time over a pipe, so calls can be interleaved with ours in rounds:

    peer = PeerProcess(threads=1)           # starts ``<peer venv>/bin/python llmlingua_peer.py serve ...``
    reply = peer.compress(documents, question, "llmlingua")  # {"seconds", "cpu_seconds", "compressed_prompt", ...}
    peer.close()
    peer = PeerProcess(model=CLASSIFIER_DIR, llmlingua2=True)  # PromptCompressor(use_llmlingua2=True)
    reply = peer.compress(documents, question, "llmlingua2")  # compress_prompt(documents, rate=0.5)

The worker side (``serve``) imports nothing from mmcompress: it runs in the package's environment with the
reference script's settings, instruction and model folder, and its offline tokenizer stand-in for tiktoken.
The client side watches the worker's resident memory and wall time (``rss_limit_gib``, ``timeout_s``): a call
past either is killed and reported as such, so a long input that exhausts the machine is a result, not a crash.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MMCOMPRESS_SHARED") or next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.exists()), REPO.parent / "shared"))
REFERENCE = SHARED / "peer" / "llmlingua_reference.py"
# settings the reference script does not have: LLMLingua-2 at rate 0.5 with compress_prompt's defaults (its
# context-level filter on, as ours by default); the instruction and question the worker passes are ignored there
EXTRA_SETTINGS = {"llmlingua2": dict(rate=0.5)}


def reference_module():
    """``llmlingua_reference.py`` as a module (its settings, instruction, venv and model folder)."""
    spec = importlib.util.spec_from_file_location("llmlingua_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_available() -> str | None:
    """None when the published package can run here, else why not."""
    if not REFERENCE.exists():
        return f"{REFERENCE} is absent"
    ref = reference_module()
    if not (ref.VENV / "bin" / "python").exists() or not (ref.MODEL / "config.json").exists():
        return f"the package's environment is absent: run `python {REFERENCE} setup`"
    return None


class PeerProcess:
    """A worker process running llmlingua 0.2.2's ``PromptCompressor`` in its own environment."""

    def __init__(self, *, threads: int = 0, model: str | None = None, device: str = "cpu",
                 rss_limit_gib: float | None = None, timeout_s: float | None = None, llmlingua2: bool = False):
        why = peer_available()
        if why:
            raise RuntimeError(why)
        ref = reference_module()
        self.settings = {**ref.SETTINGS, **EXTRA_SETTINGS}
        self.rss_limit = rss_limit_gib
        self.timeout = timeout_s
        cmd = [str(ref.VENV / "bin" / "python"), str(Path(__file__).resolve()), "serve", str(model or ref.MODEL), device,
               str(threads), str(REFERENCE)] + (["llmlingua2"] if llmlingua2 else [])
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = self.proc.stdout.readline()
        if not ready.strip():
            raise RuntimeError(f"the llmlingua worker did not start (exit {self.proc.wait()})")

    def compress(self, documents: list[str], question: str, setting: str, **overrides) -> dict:
        """One ``compress_prompt`` call with a setting of the reference script (and overrides); the reply has the
        worker's ``seconds`` and ``cpu_seconds`` for that call, or ``failed`` (why) when it was killed."""
        if self.proc.poll() is not None:
            return {"failed": f"worker gone (exit {self.proc.returncode})"}
        kwargs = dict(self.settings[setting], **overrides)
        self.proc.stdin.write(json.dumps({"documents": documents, "question": question, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        verdict: dict = {}
        done = threading.Event()
        watch = threading.Thread(target=self._watch, args=(done, verdict), daemon=True)
        watch.start()
        line = self.proc.stdout.readline()
        done.set()
        watch.join()
        if not line:
            self.proc.wait()
            reason = verdict.get("why") or f"worker died (exit {self.proc.returncode}, killed by the system?)"
            return {"failed": reason, "peak_rss_gib": verdict.get("peak", 0.0),
                    "cpu_seconds_when_killed": verdict.get("cpu", 0.0)}
        return json.loads(line)

    def _watch(self, done: threading.Event, verdict: dict) -> None:
        start, peak = time.monotonic(), 0.0
        cpu0 = _cpu_seconds(self.proc.pid)
        while not done.wait(0.2):
            rss = _rss_gib(self.proc.pid)
            peak = max(peak, rss)
            verdict["peak"] = peak
            verdict["cpu"] = _cpu_seconds(self.proc.pid) - cpu0  # what a killed call had computed
            if self.rss_limit and rss > self.rss_limit:
                verdict["why"] = f"resident memory passed {self.rss_limit:g} GiB"
            elif self.timeout and time.monotonic() - start > self.timeout:
                verdict["why"] = f"ran past {self.timeout:g} s"
            else:
                continue
            self.proc.kill()  # our own worker, by its id
            return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def serve(model: str, device: str, threads: int, reference: str, llmlingua2: bool = False) -> None:
    """Worker loop (in the package's environment): one JSON request per line in, one JSON reply per line out.
    ``model`` is the scorer (SmolLM2's folder), or with ``llmlingua2`` the token classifier's folder; the token
    counts always use the reference's SmolLM2 tokenizer, as its script does."""
    import resource

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    spec = importlib.util.spec_from_file_location("llmlingua_reference", reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    import tiktoken
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(ref.MODEL if llmlingua2 else model)

    class Enc:  # as in the reference script: token counts use the scorer's tokenizer (tiktoken is not reachable)
        def encode(self, s, **kw):
            return hf.encode(s, add_special_tokens=False)

        def decode(self, ids, **kw):
            return hf.decode(ids)

    tiktoken.encoding_for_model = lambda *a, **k: Enc()
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=model, device_map=device, use_llmlingua2=llmlingua2)
    out = sys.stdout
    sys.stdout = sys.stderr  # the package's prints must not mix with replies
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        t, c = time.perf_counter(), time.process_time()
        res = pc.compress_prompt(req["documents"], instruction=ref.INSTRUCTION, question=req["question"], **req["kwargs"])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        reply = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                 "compressed_prompt": res["compressed_prompt"], "origin_tokens": res.get("origin_tokens"),
                 "compressed_tokens": res.get("compressed_tokens"),
                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    if len(sys.argv) in (6, 7) and sys.argv[1] == "serve" and sys.argv[6:] in ([], ["llmlingua2"]):
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], llmlingua2=sys.argv[6:] == ["llmlingua2"])
    else:
        print(f"usage: {sys.argv[0]} serve MODEL DEVICE THREADS REFERENCE [llmlingua2] (started by PeerProcess)",
              file=sys.stderr)
        raise SystemExit(2)
