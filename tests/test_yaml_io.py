"""Configs, recipes and --set values read ML-style scalars as meant (YAML 1.2), not as PyYAML's YAML 1.1 does."""
import yaml

from mmcompress.cli.common import parse_overrides
from mmcompress.training.tasks import load_recipe
from mmcompress.yaml_io import load_yaml


def test_exponents_are_floats_and_no_is_a_string():
    text = "lr: 5e-4\nscale: 1E3\nrate: .5\nsteps: 20\nmixed_precision: no\nflag: off\nresume: false\nok: True\nx: null"
    assert yaml.safe_load(text)["lr"] == "5e-4" and yaml.safe_load(text)["mixed_precision"] is False  # the trap
    data = load_yaml(text)
    assert data == {"lr": 5e-4, "scale": 1000.0, "rate": 0.5, "steps": 20, "mixed_precision": "no", "flag": "off",
                    "resume": False, "ok": True, "x": None}
    assert isinstance(data["steps"], int) and isinstance(data["lr"], float)
    assert load_yaml("v: [1.5e-3, -2e2, .inf, 1.0]")["v"] == [1.5e-3, -200.0, float("inf"), 1.0]
    assert load_yaml("version: 1.2.3")["version"] == "1.2.3"


def test_recipes_and_set_values_use_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: toy\ntrain:\n  lr: 3e-4\n  mixed_precision: no\n")
    assert load_recipe(path)["train"] == {"lr": 3e-4, "mixed_precision": "no"}
    assert parse_overrides(["train.lr=5e-4", "train.mixed_precision=no", "seed=3"]) == {
        "train.lr": 5e-4, "train.mixed_precision": "no", "seed": 3}
