"""Run llmlingua 0.2.2's LLMLingua-2 path on multi-document rows; executed by the reference environment's Python
(built by ``../shared/peer/llmlingua_reference.py setup``), never by mmcompress's.

    <peer venv>/bin/python benchmarks/llmlingua2_reference_run.py CLASSIFIER_DIR COUNTER_DIR IN.jsonl OUT.jsonl \
        SETTINGS_JSON [--limit N]

``SETTINGS_JSON`` maps a setting name to ``compress_prompt`` keyword arguments. As in ``llmlingua_reference.py``, the
token counts that llmlingua takes from tiktoken (gpt-3.5-turbo, not reachable offline) come from the tokenizer in
``COUNTER_DIR`` (SmolLM2, the counting tokenizer of mmcompress). Each output row:
``{"id", "setting", "kwargs", "compressed_prompt", "compressed_prompt_list", "fn_labeled_original_prompt", "seconds"}``.
"""
import json
import os
import sys
import time


def main(argv):
    clf, counter, inp, out, settings = argv[:5]
    limit = int(argv[argv.index("--limit") + 1]) if "--limit" in argv else 10**9
    os.environ["HF_HUB_OFFLINE"] = "1"
    import tiktoken
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(counter)

    class Enc:
        def encode(self, s, **kw):
            return hf.encode(s, add_special_tokens=False)

        def decode(self, ids, **kw):
            return hf.decode(ids)

    tiktoken.encoding_for_model = lambda *a, **k: Enc()
    import llmlingua
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=clf, device_map="cpu", use_llmlingua2=True)
    settings = json.loads(settings)
    rows = [json.loads(line) for line in open(inp)][:limit]
    with open(out, "w") as f:
        for r in rows:
            for name, kw in settings.items():
                t = time.perf_counter()
                res = pc.compress_prompt(r["documents"], return_word_label=True, **kw)
                f.write(json.dumps(dict(id=r["id"], setting=name, kwargs=kw, llmlingua=llmlingua.__version__,
                                        compressed_prompt=res["compressed_prompt"],
                                        compressed_prompt_list=res["compressed_prompt_list"],
                                        fn_labeled_original_prompt=res["fn_labeled_original_prompt"],
                                        seconds=time.perf_counter() - t)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
