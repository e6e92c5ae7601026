"""Config fields are type-checked when a config is built (from Python, YAML or ``--set``), and training recipes
refuse unknown keys at every level, before any model is loaded."""
from __future__ import annotations

import pytest

from mmcompress import create_compressor
from mmcompress.cli import main
from mmcompress.errors import ConfigError
from mmcompress.training import TrainConfig, load_recipe, run_recipe
from mmcompress.yaml_io import load_yaml


@pytest.mark.parametrize("field, value, message", [
    ("seed", "abc", "RandomConfig.seed must be an integer"),
    ("seed", 1.5, "RandomConfig.seed must be an integer"),
    ("dtype", "float7", "RandomConfig.dtype must be one of"),
    ("device", "quantum", "RandomConfig.device must be"),
    ("unit", 3, "RandomConfig.unit must be a string"),
    ("target_tokenizer", 7, "RandomConfig.target_tokenizer must be"),
])
def test_wrong_types_are_config_errors_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        create_compressor("random", **{field: value})


def test_harmless_spellings_are_coerced(tiny_dir):
    # a numeric string for an int field, a path for a str field
    compressor = create_compressor("random", seed="3", model=str(tiny_dir), target_tokenizer=tiny_dir)
    assert compressor.config.seed == 3 and compressor.config.target_tokenizer == str(tiny_dir)
    assert TrainConfig.from_dict({"lr": "5e-4", "max_steps": 20.0}).max_steps == 20


@pytest.mark.parametrize("text, message", [
    ("lr: -1", "TrainConfig.lr must be >= 0"),
    ("lr: .nan", "TrainConfig.lr must be a finite number"),
    ("seed: abc", "TrainConfig.seed must be an integer"),
    ("progress: maybe", "TrainConfig.progress must be true or false"),
    ("log_every: 0", "TrainConfig.log_every must be > 0"),
])
def test_train_settings_from_yaml_are_checked(text, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(load_yaml(text))


def test_scorer_batch_budget_must_be_positive():
    with pytest.raises(ConfigError, match="SelectiveContextConfig.max_batch_tokens must be > 0"):
        create_compressor("selective_context", max_batch_tokens=-1)


def test_yaml_config_and_cli_set_are_checked(tmp_path, capsys, tiny_dir):
    config = tmp_path / "random.yaml"
    config.write_text("compressor: random\ndtype: float7\n")
    with pytest.raises(ConfigError, match="dtype"):
        create_compressor(str(config))
    for pair, field in (("seed=abc", "seed"), ("dtype=float7", "dtype"), ("device=quantum", "device")):
        code = main(["compress", "A literal prompt with several words in it.", "--method", "random",
                     "--model", str(tiny_dir), "--set", pair])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and f"RandomConfig.{field}" in err


@pytest.mark.parametrize("task, key, value, message", [
    ("icae", "init_frm", "runs/icae/final", r"top-level recipe key.*\['init_frm'\]"),
    ("small_vlm", "data", {"npz": "x.npz", "eval_sise": 8}, r"unknown data setting.*eval_sise"),
    ("small_vlm", "model", {"adaptr": {}}, r"unknown model setting.*adaptr"),
    ("llmlingua2", "teacher", {"method": "random", "rat": 0.5}, r"unknown teacher setting.*rat"),
    ("llmlingua2", "model", {"encoder": "minilm-l6", "max_lenght": 64}, r"unknown model setting.*max_lenght"),
    ("xrag", "objective", {"kll": 1.0}, r"unknown objective setting.*kll"),
])
def test_recipe_typos_are_refused_at_every_level(tmp_path, task, key, value, message):
    # the model does not exist: the typo must be reported first, before anything is loaded
    model = {"llmlingua2": {"encoder": str(tmp_path / "missing")}, "small_vlm": {"lm": str(tmp_path / "missing")}}
    recipe = {"task": task, "model": model.get(task, {"model": str(tmp_path / "missing")}),
              "train": {"output_dir": str(tmp_path / "run")}, key: value}
    with pytest.raises(ConfigError, match=message):
        run_recipe(recipe)


def test_shipped_recipes_pass_the_key_checks():
    from pathlib import Path

    from mmcompress.training import TrainConfig
    from mmcompress.training.tasks import TASKS, stage_recipes

    checked = 0
    for path in sorted(Path(__file__).resolve().parent.parent.glob("mmcompress/configs/train/*.yaml")):
        recipe = load_recipe(path)
        allowed = TASKS.get(recipe["task"]).recipe_sections
        for run in stage_recipes(recipe) if "stages" in recipe else [recipe]:  # each stage is a plain recipe
            assert set(run) <= set(allowed), path
            TrainConfig.from_dict(run.get("train"))  # types and names of the train fields
        checked += 1
    assert checked >= 10


def test_recipe_overrides_reach_into_a_stage_list_and_refuse_a_bad_index():
    from mmcompress.training.tasks import load_recipe, stage_names, stage_recipes

    recipe = load_recipe("soft-smollm2-4x-qa", {"stages.2.data.qa_template": "plain", "stages.0.train.max_steps": 7})
    stages = stage_recipes(recipe)
    names = stage_names(recipe)
    assert len(names) == len(stages) and all(s["train"]["output_dir"].endswith(f"{i}-{n}")
                                             for i, (s, n) in enumerate(zip(stages, names), 1))
    assert [s["data"].get("qa_template") for s in stages] == [None, "chatml", "plain"]
    assert stages[0]["train"]["max_steps"] == 7
    assert stages[1]["train"]["max_steps"] == 400  # the others untouched
    with pytest.raises(ConfigError, match="not an index"):
        load_recipe("soft-smollm2-4x-qa", {"stages.9.train.lr": 1.0})
    with pytest.raises(ConfigError, match="not an index"):
        load_recipe("soft-smollm2-4x-qa", {"stages.qa.train.lr": 1.0})


def test_the_shipped_qa_recipe_is_the_three_runs_that_trained_its_weights():
    """soft-smollm2-4x-qa's stages are the committed recipes of the runs whose result ships (docs/soft.md): the same
    model, data and train settings, stage by stage; only the folders differ, and how the step is run: the recipe
    compiles its layers and runs the frozen matmuls in int8, where the shipped weights were trained eager and native
    with the sliced loss (what ``--set train.compile=no --set train.frozen_matmuls=native --set train.lm_loss=sliced``
    restores; the loss is the trainer's default, not the recipe's)."""
    from pathlib import Path

    from mmcompress.training.tasks import stage_recipes

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    runs = [load_recipe(results / f"soft_spans{part}_recipe.yaml") for part in ("", "_qa_focus", "_qa_focus_more")]
    stages = stage_recipes(load_recipe("soft-smollm2-4x-qa"))
    assert stages[0]["init_from"] == "soft-smollm2-4x" and runs[0]["init_from"] == "mmcompress/trained/soft-smollm2-4x"
    for stage, run in zip(stages, runs, strict=True):
        for recipe in (stage, run):
            recipe.pop("init_from")
            recipe["train"].pop("output_dir")
        assert (stage["train"].pop("compile"), stage["train"].pop("frozen_matmuls")) == ("layers", "int8")
        assert "compile" not in run["train"] and "frozen_matmuls" not in run["train"]
        assert stage == run
