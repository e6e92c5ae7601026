"""LLMLingua-2: word merging for every tokenizer family, chunking past the encoder's limit, forcing, digits,
consecutive duplicates, the budget in the counting tokenizer, keep policies, saved folders."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from tiny_classifiers import make_classifier

from mmcompress import Prompt, TextSegment
from mmcompress.errors import ConfigError
from mmcompress.hard.llmlingua2 import LLMLingua2
from mmcompress.scoring import TokenClassifierScorer

TEXT = ("Paris is the capital of France. Photosynthesis converts light energy into chemical energy!\n"
        "The game was played on February 7, 2016, at Levi's Stadium.")
EXPECTED_WORDS = {
    # BERT's pre-tokenizer splits punctuation off; the Metaspace one (XLM-R) only at whitespace
    "bert": ["Paris", "is", "the", "capital", "of", "France", ".", "Photosynthesis", "converts", "light", "energy",
             "into", "chemical", "energy", "!", "The", "game", "was", "played", "on", "February", "7", ",", "2016", ",",
             "at", "Levi", "'", "s", "Stadium", "."],
    "roberta": ["Paris", "is", "the", "capital", "of", "France", ".", "Photosynthesis", "converts", "light", "energy",
                "into", "chemical", "energy", "!", "The", "game", "was", "played", "on", "February", "7", ",", "2016",
                ",", "at", "Levi", "'s", "Stadium", "."],
    "xlmr": ["Paris", "is", "the", "capital", "of", "France.", "Photosynthesis", "converts", "light", "energy", "into",
             "chemical", "energy!", "The", "game", "was", "played", "on", "February", "7,", "2016,", "at", "Levi's",
             "Stadium."],
}

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module", params=["bert", "roberta", "xlmr"])
def family(request):
    return request.param, *make_classifier(request.param)


def long_text(n_sentences: int = 30) -> str:
    base = ["Paris is the capital of France.", "The river flows to the sea.", "Berlin is the capital of Germany.",
            "Neural networks learn representations from data.", "A journey of a thousand miles begins with a step."]
    return " ".join(base[i % len(base)] for i in range(n_sentences))


def test_word_merging_by_word_ids(family):
    name, model, tok = family
    scorer = TokenClassifierScorer(model, tok)
    (wp,) = scorer.word_probs([TEXT])
    assert wp.words() == EXPECTED_WORDS[name]
    # every word's probability is the mean of its tokens' probabilities
    tk = scorer.tokenize([TEXT])[0]
    token_p = np.concatenate(scorer.token_probs([tk.ids[s:e] for s, e in scorer.chunks(tk, TEXT)]))
    for w in range(len(wp)):
        members = np.flatnonzero(tk.word_of_token == w)
        assert len(members) == wp.token_counts[w] > 0
        assert wp.probs[w] == pytest.approx(token_p[members].mean(), abs=1e-6)
    first = TokenClassifierScorer(model, tok, token_to_word="first").word_probs([TEXT])[0]
    starts = [np.flatnonzero(tk.word_of_token == w)[0] for w in range(len(wp))]
    assert np.allclose(first.probs, token_p[starts], atol=1e-6)
    multi = np.flatnonzero(wp.token_counts > 1)
    assert len(multi) and not np.allclose(first.probs[multi], wp.probs[multi])  # mean and first really differ


def test_chunking_beyond_the_encoder_limit(family):
    name, model, tok = family
    scorer = TokenClassifierScorer(model, tok, batch_size=3)
    text = long_text()
    tk = scorer.tokenize([text])[0]
    assert len(tk.ids) > 3 * scorer.chunk_tokens
    chunks = scorer.chunks(tk, text)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(tk.ids)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert all(0 < e - s <= scorer.chunk_tokens for s, e in chunks)
    for s, e in chunks[:-1]:  # whole words, and here every cut lands after a sentence's final period
        assert tk.word_of_token[e - 1] != tk.word_of_token[e]
        assert text[tk.spans[tk.word_of_token[e - 1]][0] : tk.spans[tk.word_of_token[e - 1]][1]].endswith(".")
    # probabilities equal classifying each chunk on its own, and every word gets one
    (wp,) = scorer.word_probs([text])
    per_chunk = scorer.token_probs([tk.ids[s:e] for s, e in chunks])
    token_p = np.concatenate(per_chunk)
    for w in [0, len(wp) // 2, len(wp) - 1]:
        assert wp.probs[w] == pytest.approx(token_p[tk.word_of_token == w].mean(), abs=1e-6)
    # batching with other texts (padding) does not change a text's probabilities
    together = scorer.word_probs([TEXT, text, "Short one."])[1]
    assert np.allclose(together.probs, wp.probs, atol=1e-5)


def test_tokenizer_without_word_ids_is_rejected():
    model, _ = make_classifier("bert")

    class SlowTokenizer:  # a Python (slow) tokenizer has no word_ids()
        is_fast = False

    with pytest.raises(ConfigError, match="fast tokenizer"):
        TokenClassifierScorer(model, SlowTokenizer())


@pytest.fixture(scope="module")
def compressor_parts(tiny_dir):
    model, tok = make_classifier("bert")
    return model, tok, str(tiny_dir)


def make(parts, **kw):
    """The global budget (the behaviour these tests were written for); the chunk rule has its own tests below."""
    model, tok, counter = parts
    return LLMLingua2(classifier_model=model, classifier_tokenizer=tok, **{"model": counter, "budget": "global", **kw})


def test_rate_met_in_counting_tokenizer_and_keep_policies(compressor_parts):
    from mmcompress.models import load_tokenizer

    c = make(compressor_parts)
    docs = [long_text(12), long_text(7)]
    prompt = Prompt.from_documents(docs, instruction="Answer the question using the documents.",
                                   question="What is the capital of France?")
    for rate in (0.6, 0.35):
        r = c.compress(prompt, rate=rate)
        tok = load_tokenizer(compressor_parts[2])
        n0 = len(tok(prompt.text, add_special_tokens=False)["input_ids"])
        assert r.origin_tokens == n0
        assert r.compressed_tokens <= round(rate * n0)  # met in the counting tokenizer, separators included
        assert r.compressed_tokens >= 0.8 * rate * n0
        assert r.text.startswith("Answer the question using the documents.")
        assert r.text.endswith("What is the capital of France?")
    # kept segment untouched, own-rate segment compressed at its own rate
    p = Prompt((TextSegment(long_text(5), role="context", keep=True), TextSegment(long_text(10), role="context", rate=0.3),
                TextSegment(long_text(10), role="context")))
    r = c.compress(p, rate=0.6)
    assert r.prompt.segments[0].text == long_text(5)
    own = r.selections[1]
    kept_share = own.kept.sum() / len(own.kept)
    assert 0.15 < kept_share < 0.45


def with_probs(compressor: LLMLingua2, prob_of_word) -> LLMLingua2:
    """The compressor with the classifier's keep probabilities replaced by ``prob_of_word(word)`` (the words and their
    spans still come from the classifier's tokenizer), so that a test states the scores it is about instead of
    depending on what a random classifier happens to say."""
    scorer = compressor.scorer
    real = scorer.word_probs

    def word_probs(texts):
        return [dataclasses.replace(wp, probs=np.array([prob_of_word(w) for w in wp.words()], dtype=np.float64))
                for wp in real(texts)]

    scorer.word_probs = word_probs
    return compressor


def test_force_tokens_digits_and_consecutive_duplicates(compressor_parts):
    text = ("The game was played on February 7, 2016. Paris is the capital of France. Berlin is the capital of "
            "Germany. The river flows to the sea. Neural networks learn representations from data.")

    def low_forced(word):  # the classifier ranks "Germany", the numbers and the punctuation below every other word
        return 0.1 if word in {"Germany", ".", ","} or re.search(r"\d", word) else 0.9

    plain = with_probs(make(compressor_parts), low_forced).compress(text, rate=0.4)
    forced = with_probs(make(compressor_parts, force_tokens=["Germany", "."], force_reserve_digit=True),
                        low_forced).compress(text, rate=0.4)
    assert "Germany" in forced.text and {"7", "2016."} <= set(forced.text.replace(",", " ").split())
    assert forced.text.count(".") == text.count(".")  # every forced period survives
    assert forced.compressed_tokens <= round(0.4 * forced.origin_tokens)  # and the budget still holds
    # without forcing, the same budget goes to the better-ranked words
    assert "Germany" not in plain.text and not re.search(r"\d", plain.text) and "." not in plain.text
    # drop_consecutive: a forced "." repeated with nothing kept between is dropped, whether the repeat was in the text
    # ("beta. . .") or appears once the words between go (". gamma delta.": both rank last and the budget drops them)
    dotted = "Alpha beta. . . gamma delta. Paris is the capital of France. . The river flows to the sea."

    def low_between(word):
        return 0.1 if word in {"gamma", "delta"} else 0.9

    keep = with_probs(make(compressor_parts, force_tokens=["."], drop_consecutive=False), low_between).compress(
        dotted, rate=0.92)
    drop = with_probs(make(compressor_parts, force_tokens=["."], drop_consecutive=True), low_between).compress(
        dotted, rate=0.92)
    assert keep.text == "Alpha beta. . . . Paris is the capital of France. . The river flows to the sea."
    assert drop.text == "Alpha beta. Paris is the capital of France. The river flows to the sea."
    assert re.search(r"\.\s+\.", keep.text) and not re.search(r"\.\s+\.", drop.text)
    assert drop.compressed_tokens < keep.compressed_tokens <= round(0.92 * keep.origin_tokens)


def test_context_level_filter_drops_documents_first(compressor_parts):
    c = make(compressor_parts, context_level_filter=True, context_level_rate=0.5)
    docs = [long_text(3), "Berlin is the capital of Germany. " * 3, long_text(4), "The river flows to the sea. " * 3]
    probs = [wp.probs.mean() for wp in c.word_probabilities(docs)]
    r = c.compress(Prompt.from_documents(docs), rate=0.45)
    kept_share = [sel.kept.mean() if sel is not None else 0 for sel in r.selections]
    low = np.argsort(probs)[:2]
    high = np.argsort(probs)[2:]
    assert max(kept_share[i] for i in low) <= min(kept_share[i] for i in high)


def test_missing_classifier_is_a_clear_error(tiny_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.delenv("MMCOMPRESS_LLMLINGUA2_CLASSIFIER", raising=False)
    monkeypatch.chdir(tmp_path)
    c = LLMLingua2(model=str(tiny_dir))
    with pytest.raises(ConfigError, match="needs a token classifier"):
        c.compress("Paris is the capital of France. The river flows.", rate=0.5)
    with pytest.raises(ConfigError, match="token_to_word"):
        LLMLingua2(token_to_word="max")
    with pytest.raises(ConfigError, match="force_tokens"):
        LLMLingua2(force_tokens=".")


def test_saved_folder_loads_through_factory_and_default(tmp_path, tiny_dir, monkeypatch):
    from mmcompress.factory import create_compressor
    from mmcompress.hard.llmlingua2 import default_classifier, register_default_classifier

    model, tok = make_classifier("xlmr")
    folder = tmp_path / "clf"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "mmcompress_config.json").write_text(json.dumps({"compressor": "llmlingua2", "config": {"token_to_word": "first"}}))
    c = create_compressor(str(folder), model=str(tiny_dir))
    assert isinstance(c, LLMLingua2) and c.config.token_to_word == "first"
    r = c.compress(TEXT, rate=0.5)
    assert 0 < r.compressed_tokens < r.origin_tokens
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MMCOMPRESS_LLMLINGUA2_CLASSIFIER", raising=False)
    register_default_classifier(folder)
    assert default_classifier() == str(folder.resolve())
    r2 = LLMLingua2(model=str(tiny_dir), token_to_word="first").compress(TEXT, rate=0.5)
    assert r2.text == r.text


def test_batch_equals_one_by_one(compressor_parts):
    c = make(compressor_parts)
    prompts = [long_text(9), Prompt.from_documents([long_text(3), TEXT], question="Where?"), TEXT]
    assert [r.text for r in c.compress_batch(prompts, rate=0.5)] == [c.compress(p, rate=0.5).text for p in prompts]


@pytest.mark.slow
def test_real_minilm_words_keep_casing_and_chunk_at_512(tiny_dir):
    """The real MiniLM (uncased WordPiece): words are spans of the original text, so casing survives, and a long
    text is cut into chunks of at most 510 text tokens."""
    from mmcompress.hard.llmlingua2_train import load_classifier_for_training

    model, tok = load_classifier_for_training("minilm-l6")
    scorer = TokenClassifierScorer(model.eval(), tok)
    assert scorer.max_length == 512 and scorer.chunk_tokens == 510
    (wp,) = scorer.word_probs([TEXT])
    assert wp.words()[:7] == ["Paris", "is", "the", "capital", "of", "France", "."]
    text = long_text(150)
    tk = scorer.tokenize([text])[0]
    chunks = scorer.chunks(tk, text)
    assert len(chunks) >= 3 and all(e - s <= 510 for s, e in chunks)
    c = LLMLingua2(classifier_model=model, classifier_tokenizer=tok, model=str(tiny_dir), budget="global")
    r = c.compress(Prompt.from_documents([text], question="Where?"), rate=0.4)
    assert r.compressed_tokens <= round(0.4 * r.origin_tokens) and r.text.endswith("Where?")


def test_a_classifier_passed_in_training_mode_scores_without_dropout(compressor_parts):
    """A freshly built model is in training mode; scoring through dropout would keep different words each call."""
    model, _, _ = compressor_parts
    model.train()
    c = make(compressor_parts)
    assert not model.training
    text = "Paris is the capital of France. The river flows to the sea. Neural networks learn from data."
    assert len({c.compress(text, rate=0.5).text for _ in range(3)}) == 1
