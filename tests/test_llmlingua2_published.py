"""llmlingua2's default classifier falls back to the published microsoft/llmlingua-2-* classifiers by hub id when
the hub answers (or they are in the local HF cache), and otherwise stops with an error that names them."""
from __future__ import annotations

import pytest

import mmcompress.models.loading as loading
from mmcompress.errors import ConfigError
from mmcompress.hard.llmlingua2 import PUBLISHED_CLASSIFIERS, LLMLingua2, default_classifier


@pytest.fixture
def nothing_local(tmp_path, monkeypatch):
    """No env var, no registered classifier, no runs/ folder: only the published ones could serve."""
    monkeypatch.delenv("MMCOMPRESS_LLMLINGUA2_CLASSIFIER", raising=False)
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "_in_local_hf_cache", lambda repo_id: False)


def test_published_classifier_by_hub_id_when_the_hub_answers(nothing_local, monkeypatch):
    asked = []

    def probe(repo_id):
        asked.append(repo_id)
        return repo_id == PUBLISHED_CLASSIFIERS[0]

    monkeypatch.setattr(loading, "_probe_hub", probe)
    assert default_classifier() == "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
    assert asked == [PUBLISHED_CLASSIFIERS[0]]
    monkeypatch.setattr(loading, "_probe_hub", lambda repo_id: repo_id == PUBLISHED_CLASSIFIERS[1])
    assert default_classifier() == "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"


def test_a_cached_published_classifier_needs_no_hub(nothing_local, monkeypatch):
    monkeypatch.setattr(loading, "_in_local_hf_cache", lambda repo_id: repo_id == PUBLISHED_CLASSIFIERS[1])
    monkeypatch.setattr(loading, "_probe_hub", lambda repo_id: pytest.fail("the hub was asked"))
    assert default_classifier() == PUBLISHED_CLASSIFIERS[1]


def test_without_hub_the_error_names_the_published_classifiers(nothing_local, monkeypatch, tiny_dir):
    monkeypatch.setattr(loading, "_probe_hub", lambda repo_id: False)
    assert default_classifier() is None
    with pytest.raises(ConfigError) as e:
        LLMLingua2(model=str(tiny_dir)).compress("Some text to compress with the classifier.", rate=0.5)
    message = str(e.value)
    assert all(hf_id in message for hf_id in PUBLISHED_CLASSIFIERS) and "classifier=" in message
