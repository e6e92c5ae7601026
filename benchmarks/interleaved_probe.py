"""Where an interleaved model fails: perception (does it see each image?) or routing (does it answer about the right one?).

For each trained interleaved folder (full or soft mode) on held-out easy-VQA images:
- perception: single images, "<image> What is this?" -> "a red circle": colour and shape read correctly;
- routing: 3-image prompts ("What colour is the shape in the second image?"): how often the answer is the asked
  image's value, another image's value, or neither. With distinct values per prompt, answering about a random image
  gives 1/3 right, 2/3 other.
``--text-probe`` adds the frozen decoder's own routing: SmolLM2 given the three images as words ("Image 2: a blue
circle") after two solved examples. The image path embeds each image alone, so picking the asked image is left to
the frozen LLM's attention; one that cannot pick it from words is unlikely to pick it from image tokens.
``--tuned-text-probe STEPS`` asks whether tuning the decoder would help: LoRA on a copy of SmolLM2, trained on the
words version of train-split prompts, then the same test questions.

    PYTHONPATH=. python benchmarks/interleaved_probe.py --model caption=runs/il-caption-1200/final \\
        --model full=runs/il-full-lora-500/final --text-probe --examples 96 --threads 2

Writes ``benchmarks/results/interleaved_probe.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from interleaved_results import answer_batches  # the script's folder is on sys.path
from mmcompress.multimodal.tasks import answer_correct, build_examples
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

OUT = Path(__file__).resolve().parent / "results"
QA_KINDS = {"shape-colour": 0, "shape-what": 1}  # which word of a label ("red circle") the question asks for
SPLIT = "validation"  # which held-out split the probes read (--split); test only for reported numbers


def _answers(comp, examples, batch_size: int = 8) -> list[str]:
    batches = answer_batches(comp, [e.prompt() for e in examples], batch_size)
    return [a for _, answers in batches for a in answers]


def routing(predictions: list[str], examples, word: int) -> dict[str, float]:
    """Share of answers naming the asked image's value, another image's, or none of them."""
    asked = other = 0
    for pred, e in zip(predictions, examples):
        values = [label.split()[word] for label in e.labels]
        hit = [j for j, v in enumerate(values) if answer_correct(pred, v)]
        asked += e.target_image in hit
        other += bool(hit) and e.target_image not in hit
    n = max(1, len(examples))
    return {"asked_image": asked / n, "other_image": other / n, "neither": 1 - (asked + other) / n}


def probe_model(path: str, n: int) -> dict:
    from mmcompress import create_compressor

    comp = create_compressor(path, device="cpu")
    comp.module.eval()
    if getattr(comp.config, "mode", "soft") == "soft" and comp.config.slot_schedule:
        comp.set_slots(8)
    captions = build_examples("shapes", SPLIT, n, seed=3, kinds=["caption"])
    preds = _answers(comp, captions)
    words = [p.lower().split() for p in preds]
    gold = [e.answer.split() for e in captions]  # ["a", colour, shape]
    row = {"perception_colour": float(np.mean([w[1:2] == g[1:2] for w, g in zip(words, gold)])),
           "perception_shape": float(np.mean([w[2:3] == g[2:3] for w, g in zip(words, gold)])),
           "caption_samples": list(zip(preds[:4], [e.answer for e in captions[:4]]))}
    for kind, word in QA_KINDS.items():
        examples = build_examples("shapes", SPLIT, n, seed=1, num_images=(3,), kinds=[kind])
        row[kind] = routing(_answers(comp, examples), examples, word)
    return row


def _as_words(example, answer: bool) -> str:
    context = example.context
    for label in example.labels:
        context = context.replace("<image>", f"a {label}", 1)
    return context + example.question + "\nAnswer:" + (f" {example.answer}\n\n" if answer else "")


def _route_words(model, tokenizer, examples, word: int, demos: str = "") -> dict[str, float]:
    """Routing of a causal LM that reads the images as words; the first candidate value it names counts."""
    preds = []
    for e in examples:
        ids = tokenizer(demos + _as_words(e, False), return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=10, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).lower()
        values = {label.split()[word] for label in e.labels}
        preds.append(next((w for w in re.findall(r"[a-z]+", text) if w in values), ""))
    return routing(preds, examples, word)


def text_probe(n: int, shots: int = 2) -> dict:
    """The frozen decoder reading the images as words, with ``shots`` solved train examples first (so the answer
    format is known)."""
    from mmcompress.models.loading import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype=torch.float32)
    row = {}
    for kind, word in QA_KINDS.items():
        examples = build_examples("shapes", SPLIT, n, seed=1, num_images=(3,), kinds=[kind])
        demos = "".join(_as_words(e, True) for e in build_examples("shapes", "train", shots, seed=5,
                                                                   num_images=(3,), kinds=[kind]))
        row[kind] = _route_words(lm.model, lm.tokenizer, examples, word, demos)
    return row


def tuned_text_probe(n: int, steps: int, batch_size: int = 8, lr: float = 1e-3) -> dict:
    """Can the decoder learn to route? LoRA (peft, r 16) on a copy of SmolLM2, trained on train-split prompts given as
    words (loss on the answer only), then asked the text probe's test questions without demonstrations."""
    import copy

    from peft import LoraConfig, get_peft_model

    from mmcompress.models.loading import load_language_model

    lm = load_language_model("smollm2-135m", device="cpu", dtype=torch.float32)
    tok = lm.tokenizer
    model = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    train = build_examples("shapes", "train", steps * batch_size, seed=7, num_images=(3,), kinds=list(QA_KINDS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        rows, labels = [], []
        for e in train[step * batch_size : (step + 1) * batch_size]:
            prompt = tok(_as_words(e, False)).input_ids
            answer = tok(f" {e.answer}\n", add_special_tokens=False).input_ids
            rows.append(torch.tensor(prompt + answer))
            labels.append(torch.tensor([-100] * len(prompt) + answer))
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id or 0)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        target = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    row = {"steps": steps, "last_loss": float(loss)}
    for kind, word in QA_KINDS.items():
        examples = build_examples("shapes", SPLIT, n, seed=1, num_images=(3,), kinds=[kind])
        row[kind] = _route_words(model, tok, examples, word)
    return row


def write_report(data: dict) -> None:
    lines = ["# Interleaved models: perception vs routing", "",
             f"{data['examples']} held-out easy-VQA examples per probe. Machine: {data['machine']}.", "",
             "| model | caption colour | caption shape | colour Q: asked image | colour Q: other image | "
             "shape Q: asked image | shape Q: other image |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in data["rows"].items():
        cells = [f"{r[k]:.3f}" if k in r else "n/a" for k in ("perception_colour", "perception_shape")]
        for kind in QA_KINDS:
            cells += [f"{r[kind]['asked_image']:.3f}", f"{r[kind]['other_image']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Routing columns: share of answers naming the asked image's value / another image's value (the three "
              "images of a prompt differ in the value asked, so a model that reads a random image scores 0.333 / "
              "0.667). `text probe`: frozen SmolLM2-135M given the images as words, after two solved examples.", ""]
    (OUT / "interleaved_probe.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a trained interleaved model")
    ap.add_argument("--text-probe", action="store_true")
    ap.add_argument("--tuned-text-probe", type=int, default=0, metavar="STEPS",
                    help="also LoRA-tune the decoder on the words version for STEPS steps of 8, then probe it")
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--split", choices=["validation", "test"], default="validation",
                    help="validation while choosing a design; test once, for the reported numbers")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    global SPLIT
    SPLIT = args.split
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / "interleaved_probe.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {"rows": {}}
    data.update({"examples": args.examples, "split": SPLIT, "machine": machine_line()})
    for spec in args.model:
        name, _, path = spec.rpartition("=")  # names may hold "=" ("K=8"), folders rarely do
        if not path:
            raise SystemExit(f"--model takes NAME=FOLDER, got {spec!r}")
        data["rows"][name] = {"folder": path, **probe_model(path, args.examples)}
    if args.text_probe:
        data["rows"]["text probe (frozen SmolLM2, images as words, 2-shot)"] = text_probe(args.examples)
    if args.tuned_text_probe:
        data["rows"][f"text probe, LoRA-tuned decoder ({args.tuned_text_probe} x 8)"] = tuned_text_probe(
            args.examples, args.tuned_text_probe)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    write_report(data)
    print((OUT / "interleaved_probe.md").read_text())


if __name__ == "__main__":
    main()
