"""LLMLingua-2's default selection (``budget: chunk``) against a restatement of llmlingua 0.2.2's rule, the context-level
filter, and the global budget kept as an option.

The restatement below copies the logic of llmlingua 0.2.2 (PyPI; microsoft/LLMLingua), ``llmlingua/prompt_compressor.py``
``compress_prompt_llmlingua2`` (772-780 force-token placeholders, 848-860 context-level filter), ``__chunk_context``
(2230-2253), ``__merge_token_to_word`` (2255-2292), ``__compress`` (2342-2426), and ``llmlingua/utils.py``
``TokenClfDataset`` (13-68), ``is_begin_of_new_word`` / ``get_pure_token`` (77-111), on a tiny WordPiece classifier.
Its window is the tiny encoder's (64) instead of the hard-coded 512.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_classifiers import make_classifier

from mmcompress import Prompt
from mmcompress.errors import ConfigError
from mmcompress.hard.llmlingua2 import LLMLingua2

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["Paris is the capital of France.", "The river flows to the sea.", "Berlin is the capital of Germany.",
             "Neural networks learn representations from data.", "A journey of a thousand miles begins with a step.",
             "The game was played on February 7, 2016, at Levi's Stadium?"]


def text_of(n: int, start: int = 0) -> str:
    return " ".join(SENTENCES[(start + i) % len(SENTENCES)] for i in range(n))


@torch.no_grad()
def reference_word_probs(model, tok, chunk: str, force_tokens, token_map, max_seq_len: int = 64):
    """TokenClfDataset + __merge_token_to_word (BERT branch): words, forced probabilities, "no force" probabilities."""
    ids = tok.convert_tokens_to_ids((["[CLS]"] + tok.tokenize(chunk) + ["[SEP]"])[:max_seq_len])
    probs = model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0, :, 1].numpy()
    specials = {tok.cls_token, tok.sep_token, tok.pad_token, tok.unk_token, tok.mask_token}
    words, word_probs, no_force = [], [], []
    for token, prob in zip(tok.convert_ids_to_tokens(ids), probs):
        if token in specials:
            continue
        pure = token.lstrip("##")
        if pure in force_tokens or pure in token_map.values() or not token.startswith("##"):
            prob_no_force = prob
            if pure in force_tokens or pure in token_map.values():
                prob = 1.0
            for original, placeholder in token_map.items():
                token = token.replace(placeholder, original)
            words.append(token)
            word_probs.append([prob])
            no_force.append([prob_no_force])
        else:
            words[-1] += pure
            word_probs[-1].append(prob)
            no_force[-1].append(prob_no_force)
    return words, [sum(p) / len(p) for p in word_probs], [sum(p) / len(p) for p in no_force]


def reference_chunks(tok, text: str, max_seq_len: int, chunk_end_tokens) -> list[str]:
    max_len = max_seq_len - 2
    tokens = tok.tokenize(text)
    n, st, out = len(tokens), 0, []
    while st < n:
        if st + max_len > n - 1:
            out.append(tok.convert_tokens_to_string(tokens[st:n]))
            break
        ed = st + max_len
        for j in range(0, ed - st):
            if tokens[ed - j] in chunk_end_tokens:
                ed = ed - j
                break
        out.append(tok.convert_tokens_to_string(tokens[st : ed + 1]))
        st = ed + 1
    return out


def reference_compress(model, tok, text: str, rate: float, count, force_tokens=(), max_seq_len: int = 64) -> str:
    token_map = {t: f"[NEW{i}]" for i, t in enumerate(force_tokens) if len(tok.tokenize(t)) != 1}
    ends = {".", "\n"} | {token_map[c] for c in (".", "\n") if c in token_map}
    for original, placeholder in token_map.items():
        text = text.replace(original, placeholder)
    reduce_rate = max(0, 1 - rate)
    out = []
    for chunk in reference_chunks(tok, text, max_seq_len, ends):
        words, word_probs, _ = reference_word_probs(model, tok, chunk, force_tokens, token_map)
        token_probs = [p for w, p in zip(words, word_probs) for _ in range(count(w))]
        threshold = np.percentile(token_probs, int(100 * reduce_rate + 1))
        keep = [w for w, p in zip(words, word_probs) if p > threshold or (threshold == 1.0 and p == threshold)]
        out.append(tok.convert_tokens_to_string(keep))
    return "".join(out)


@pytest.fixture(scope="module")
def counter(tiny_dir):
    from mmcompress.models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    return lambda w: len(tok(w, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("rate", [0.33, 0.5, 0.7])
def test_chunk_threshold_equals_the_reference_rule(tiny_dir, counter, rate):
    model, tok = make_classifier("bert")
    # three chunks of the tiny encoder (62 text tokens); no sentence end sits at the 63rd token of a window, where
    # the reference takes a 63-token chunk and its [SEP] is cut off by TokenClfDataset (utils.py:46-52)
    text = text_of(18)
    assert len(tok.tokenize(text)) > 2 * 62
    ours = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), render="tokens")
    result = ours.compress(text, rate=rate)
    assert result.text == reference_compress(model, tok, text, rate, counter)
    # the default rendering keeps the same words, as original text
    spans = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir)).compress(text, rate=rate)
    assert np.array_equal(spans.selections[0].kept, result.selections[0].kept)
    kept_words = [text[s:e] for (s, e), k in zip(spans.selections[0].spans, spans.selections[0].kept) if k]
    assert spans.text.split() and "".join(spans.text.split()) == "".join(kept_words)  # original casing
    assert spans.text != result.text and spans.text.lower().replace(" ", "") == result.text.replace(" ", "")


def test_force_tokens_with_placeholders_equal_the_reference_rule(tiny_dir, counter):
    model, tok = make_classifier("bert")  # a fresh one: the placeholders are added to it
    text = text_of(5) + "\n" + text_of(4, start=2) + "\nWhere? " + text_of(3, start=1)
    force = ["\n", "?", "capital"]
    ours = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), render="tokens",
                      force_tokens=force)
    result = ours.compress(text, rate=0.33)
    assert tok.convert_tokens_to_ids("[NEW0]") != tok.unk_token_id  # "\n" is no WordPiece token: a placeholder
    assert result.text == reference_compress(model, tok, text, 0.33, counter, force_tokens=force)
    assert result.text.count("\n") == text.count("\n") and result.text.count("capital") == text.count("capital")


def test_context_level_filter_drops_documents(tiny_dir):
    model, tok = make_classifier("bert")
    docs = [text_of(2, start=i) for i in range(6)]
    c = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), render="tokens")
    result = c.compress(Prompt.from_documents(docs, question="Where?"), rate=0.5)
    # restated: mean "no force" word probability per document, kept at or above the percentile of (rate + 1) / 2
    doc_probs = [np.mean(reference_word_probs(model, tok, d, [], {})[2]) for d in docs]
    threshold = np.percentile(doc_probs, int(100 * (1 - (0.5 + 1) / 2)))
    dropped = [i for i, p in enumerate(doc_probs) if p < threshold]
    assert dropped and result.extras["llmlingua2"]["dropped_segments"] == dropped
    kept_texts = [s.text for s in result.prompt.segments if s.role.value == "context"]
    assert len(kept_texts) == len(docs) - len(dropped)
    assert all(sel.kept.sum() == 0 for i, sel in enumerate(result.selections[: len(docs)]) if i in dropped)
    assert result.text.endswith("Where?")  # the question is kept, outside llmlingua's rate
    # the rest at the rate on their own: the same words as compressing each kept document alone
    alone = [c.compress(docs[i], rate=0.5).text for i in range(len(docs)) if i not in dropped]
    assert kept_texts == alone
    off = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir),
                     context_level_filter=False).compress(Prompt.from_documents(docs), rate=0.5)
    assert all(sel.kept.any() for sel in off.selections)


def test_global_budget_keeps_its_behaviour_and_budget(tiny_dir):
    model, tok = make_classifier("bert")
    docs = [text_of(6), text_of(3, start=2), text_of(4, start=4)]
    prompt = Prompt.from_documents(docs, instruction="Answer the question.", question="Where is Paris?")
    chunk = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), context_level_filter=False)
    glob = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), budget="global")
    for rate in (0.3, 0.5):
        g = glob.compress(prompt, rate=rate)
        assert g.compressed_tokens <= round(rate * g.origin_tokens)  # the whole prompt, instruction included
        assert g.compressed_tokens >= 0.8 * rate * g.origin_tokens
        # one ranking over all documents: the kept words are the best-ranked ones across documents
        probs = np.concatenate([wp.probs for wp in glob.word_probabilities(docs)])
        kept = np.concatenate([sel.kept for sel in g.selections[1:4]])
        assert kept[probs >= np.quantile(probs, 0.8)].all() and probs[kept].mean() > probs[~kept].mean()
        # the chunk rule is not bound by the prompt-wide budget: each document keeps about ``rate`` on its own
        c = chunk.compress(prompt, rate=rate)
        shares = [sel.kept.mean() for sel in c.selections[1:4]]
        assert all(abs(s - rate) < 0.2 for s in shares)
        assert c.extras["llmlingua2"]["rate"] == rate
    g = glob.compress(prompt, target_tokens=60)
    assert g.compressed_tokens <= 60
    # chunk rule with target_tokens: the rate over the compressible text, what the kept segments leave of the target
    request = chunk.prepare(prompt, target_tokens=60)
    pooled = sum(cost for cost, seg in zip(request.costs, request.text_segments) if seg.role.value == "context")
    info = chunk.compress(prompt, target_tokens=60).extras["llmlingua2"]
    assert info["rate"] == pytest.approx(request.plan.pooled_target / pooled) and 0 < info["rate"] < 0.5


def test_sentencepiece_words_split_at_punctuation_tokens():
    """utils.py:89-94: in the XLM-R branch a one-character punctuation token starts a word, so "France." is two words
    (the tokenizer's own words, ``word_ids()``, keep it whole); spans stay on the original text."""
    from mmcompress.hard.llmlingua2_reference import reference_words, strip_spans
    from mmcompress.scoring import TokenClassifierScorer

    model, tok = make_classifier("xlmr")
    text = "Paris is the capital of France. The game was played on February 7, 2016, at Levi's Stadium."
    (wp,) = TokenClassifierScorer(model, tok, chunking="reference").word_probs([text])
    words = reference_words(wp, tok, force_tokens=[], token_map={})
    units = strip_spans(words, text)
    pieces = [words.pieces[i].lstrip("▁") for i in units]
    assert pieces == [text[s:e] for s, e in words.spans[units]]
    assert "France" in pieces and "France." not in pieces and pieces.count(".") == 2
    assert [text[s:e] for s, e in wp.spans].count("France.") == 1


def test_bad_budget_and_render_are_config_errors():
    with pytest.raises(ConfigError, match="budget"):
        LLMLingua2(budget="per-document")
    with pytest.raises(ConfigError, match="render"):
        LLMLingua2(render="text")


@pytest.mark.slow
def test_parity_with_llmlingua_on_two_rows(tmp_path):
    """benchmarks/llmlingua2_parity.py on 2 rows: llmlingua 0.2.2 in its own environment against ours, on both shared
    classifiers; every setting's agreement of the selected words must reach the target."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import llmlingua2_parity as bench

    why = bench.reference_available()
    if why:
        pytest.skip(why)
    out = tmp_path / "parity"
    bench.main(["--limit", "2", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {(r["classifier"], r["setting"]) for r in rows} == {(c, s) for c in ("bert", "xlmr") for s in bench.SETTINGS}
    assert all(r["rows"] == 2 for r in rows)
    assert all(min(r["selected_smollm2"], r["selected_classifier"]) >= bench.TARGET for r in rows), rows
