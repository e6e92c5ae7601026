"""``mmcompress list`` labels training recipes (``task:``) as recipes, not as unreadable compressor configs."""
import json

from mmcompress.cli import main
from mmcompress import factory


def test_list_labels_training_recipes(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "my-recipe.yaml").write_text("task: llmlingua2\nmodel: {encoder: minilm-l6}\n")
    (folder / "my-config.yaml").write_text("compressor: random\nrate: 0.5\n")
    (folder / "broken-thing.yaml").write_text("rate: 0.5\n")
    monkeypatch.setattr(factory, "_CONFIG_PATHS", [*factory._CONFIG_PATHS, folder])  # not leaked to other tests

    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    recipes = {r["name"]: r for r in listing["recipes"]}
    configs = {c["name"]: c for c in listing["configs"]}
    assert recipes["my-recipe"]["task"] == "llmlingua2" and "my-recipe" not in configs
    assert "llmlingua2-minilm" in recipes  # the shipped recipe in configs/train
    assert not any("unreadable" in c["compressor"] for c in configs.values() if c["name"] in recipes)
    assert configs["my-config"]["compressor"] == "random"
    assert configs["broken-thing"]["compressor"].startswith("(unreadable")  # a broken config is still flagged

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "training recipes" in text and "my-recipe" in text.split("training recipes")[1]
    assert "llmlingua2-minilm " not in text.split("training recipes")[0]


def test_list_says_what_the_default_model_is(capsys, monkeypatch, tmp_path):
    from mmcompress.models import loading

    monkeypatch.setattr(loading, "_in_local_hf_cache", lambda repo: False)
    monkeypatch.setattr(loading, "_package_dir", lambda package: tmp_path)
    assert main(["list"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("default model: smollm2-135m -> SmolLM2-135M-Instruct as the Q4_1 GGUF")
    assert "dequantized to float32" in first
    monkeypatch.setattr(loading, "_in_local_hf_cache", lambda repo: repo == "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert main(["list", "--json"]) == 0
    loads = json.loads(capsys.readouterr().out)["default_model"]["loads"]
    assert loads.startswith("HuggingFaceTB/SmolLM2-135M-Instruct: the hub weights")


def test_list_shows_a_trained_compressors_card(tmp_path, capsys, monkeypatch):
    """A shipped trained compressor is listed with its ratio, held-out reconstruction and (a QA model) SQuAD row."""
    folder = tmp_path / "trained" / "soft-tiny-4x-qa"
    folder.mkdir(parents=True)
    (folder / factory.SAVED_CONFIG_FILE).write_text("{}")
    card = {"method": "meanpool", "ratio": 4.0, "base_model": "tiny", "heldout": {"greedy_bleu4": 0.71},
            "squad": {"questions": 52, "f1": 0.29, "contains": 0.23, "f1_of_full": 1.55, "contains_of_full": 0.8}}
    (folder / factory.TRAINED_CARD).write_text(json.dumps(card))
    monkeypatch.setattr(factory, "TRAINED_DIR", tmp_path / "trained")
    assert main(["list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "soft-tiny-4x-qa" in l)
    assert "4.0x on tiny; held-out greedy_bleu4 0.71" in line
    assert "SQuAD (52 held-out questions) F1 0.29 (155% of the full context), contains 0.23 (80%)" in line
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained"] == [{"name": "soft-tiny-4x-qa", "path": str(folder), **card}]
