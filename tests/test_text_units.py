"""Lexical units and the whitespace-preserving rebuild."""
from __future__ import annotations

import numpy as np

from mmcompress.text_units import (
    aggregate_scores,
    phrase_units,
    sentence_units,
    spacy_available,
    token_units,
    word_units,
)

TEXT = "  First para, with words.\n\nSecond para here.\nA new line!  "


def test_all_kept_is_identity_and_units_have_no_whitespace():
    for units in (word_units(TEXT), sentence_units(TEXT), phrase_units([TEXT])[0]):
        assert units.rebuild(np.ones(len(units), bool)) == TEXT
        assert all(s == s.strip() and s for s in units.strings())


def test_dropping_units_keeps_line_breaks_and_single_spaces():
    units = word_units(TEXT)
    words = units.strings()
    assert words[:8] == ["First", "para", ",", "with", "words", ".", "Second", "para"]
    keep = np.ones(len(words), bool)
    keep[[3, 4, 5, 6, 7]] = False  # "with words." and "Second para"
    assert units.rebuild(keep) == "  First para,\n\nhere.\nA new line!  "


def test_dropping_a_whole_paragraph_keeps_one_paragraph_break():
    units = sentence_units("One.\n\nTwo.\n\nThree.")
    assert units.rebuild(np.array([True, False, True])) == "One.\n\nThree."


def test_sentences_respect_abbreviations():
    assert sentence_units("Mr. Smith arrived. He left!  Did he? Yes.").strings() == [
        "Mr. Smith arrived.", "He left!", "Did he?", "Yes."]


def test_subword_tokens_rejoin_without_spaces(tiny_lm):
    _, tok = tiny_lm
    text = "Photosynthesis converts light"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    units = token_units(text, np.asarray(enc["offset_mapping"]))
    assert units.rebuild(np.ones(len(units), bool)) == text
    assert len(units) > 3  # the tiny BPE splits these words into pieces


def test_phrases_merge_noun_chunks_with_or_without_spacy():
    text = "The quick brown fox jumps over the lazy dog."
    fallback = phrase_units([text], use_spacy=False)[0].strings()
    assert "lazy dog" in fallback and "jumps" not in fallback[0]
    if spacy_available():
        assert "The quick brown fox" in phrase_units([text])[0].strings()


def test_aggregate_scores_means_and_fractional_costs():
    units = np.array([[0, 3], [4, 7]])  # "abc def"
    tokens = np.array([[0, 2], [2, 5], [5, 7]])  # "ab", "c d" spans both units, "ef"
    scores, costs = aggregate_scores(units, tokens, np.array([1.0, 3.0, 5.0]))
    assert np.allclose(scores, [2.0, 4.0])
    assert np.isclose(costs.sum(), 3.0) and costs[0] > 1.0 and costs[1] > 1.0
