"""Registry, factory and YAML configs."""
from __future__ import annotations

from pathlib import Path

import pytest

import mmcompress
from mmcompress import ConfigError, UnknownCompressorError, create_compressor, list_compressors, list_configs
from mmcompress.hard.base import HardCompressor
from mmcompress.registry import Registry

REPO = Path(__file__).resolve().parent.parent


def test_foundation_methods_are_registered():
    assert {"selective_context", "random", "truncate"} <= set(list_compressors())
    assert set(list_compressors(family="hard")) >= {"selective_context", "random", "truncate"}


def test_yaml_config_and_overrides_beat_the_file(tmp_path):
    path = tmp_path / "sc.yaml"
    path.write_text("compressor: selective_context\nunit: sentence\nrate: 0.3\n")
    c = create_compressor(path)
    assert c.config.unit == "sentence" and c.config.rate == 0.3
    c = create_compressor(str(path), rate=0.7)
    assert c.config.unit == "sentence" and c.config.rate == 0.7


def test_shipped_configs_by_name():
    configs = list_configs()
    assert "selective-context-phrase" in configs
    c = create_compressor("selective-context-phrase", rate=0.4)
    assert c.name == "selective_context" and c.config.unit == "phrase" and c.config.rate == 0.4


# training recipes (configs/train) are tested with their tasks; every other YAML names a compressor
COMPRESSOR_CONFIGS = sorted(p for p in (REPO / "mmcompress" / "configs").rglob("*.yaml") if p.parent.name != "train")


@pytest.mark.parametrize("path", COMPRESSOR_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_compressor_config_builds(path):
    import yaml

    data = yaml.safe_load(path.read_text())
    assert "compressor" in data, f"{path} names no compressor"
    assert create_compressor(path).name == data["compressor"].replace("-", "_")


def test_unknown_names_and_bad_files(tmp_path):
    with pytest.raises(UnknownCompressorError, match="available|methods:.*selective_context"):
        create_compressor("llmlinguaa")
    with pytest.raises(ConfigError, match="not found"):
        create_compressor(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("unit: phrase\n")
    with pytest.raises(ConfigError, match="compressor:"):
        create_compressor(bad)
    bad.write_text("compressor: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        create_compressor(bad)
    with pytest.raises(ConfigError, match="mmcompress_config.json"):
        create_compressor(tmp_path)


def test_registry_rejects_duplicates_and_bad_names():
    registry = Registry("thing")
    registry.register("alpha")(int)
    registry.register("alpha")(int)  # re-registering the same object is harmless (module reloads)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("alpha")(str)
    with pytest.raises(ValueError, match="lowercase"):
        registry.register("Alpha")
    with pytest.raises(UnknownCompressorError, match="unknown thing 'beta'; available: alpha"):
        registry.get("beta")


def test_a_user_defined_compressor_plugs_in(tiny_lm):
    from mmcompress import SegmentOutcome, register_compressor
    from mmcompress.results import SegmentSelection

    @register_compressor("first_words_test")
    class FirstWords(HardCompressor):
        """Keep the first half of the words of each compressible segment."""

        def compress_segments(self, request):
            out = []
            for seg in request.text_segments:
                words = seg.text.split()
                text = seg.text if not seg.compressible else " ".join(words[: len(words) // 2])
                out.append(SegmentOutcome(text, SegmentSelection.whole(seg.text, True)))
            return out

    model, tok = tiny_lm
    result = create_compressor("first_words_test", model=model, tokenizer=tok).compress("one two three four five six",
                                                                                        rate=0.5)
    assert result.text == "one two three" and result.method == "first_words_test"


def test_one_line_api_reuses_the_compressor(tiny_dir):
    a = mmcompress.compress("Paris is the capital of France. " * 4, method="random", rate=0.5, model=str(tiny_dir))
    b = mmcompress.compress("Berlin is the capital of Germany. " * 4, method="random", rate=0.5, model=str(tiny_dir))
    assert a.method == b.method == "random" and 0.3 < a.rate < 0.7
    from mmcompress.api import _cached

    assert _cached.cache_info().hits >= 1
