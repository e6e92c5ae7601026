"""A wheel built from the repository ships every config and recipe: installed into another folder (not editable) and
run from another working directory, it lists and loads each of them by name."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "mmcompress" / "configs"

CHECK = """
import json, sys
import mmcompress
from mmcompress import create_compressor, list_configs
from mmcompress.factory import find_recipe
from mmcompress.training import load_recipe

built, recipes = {}, {}
for path in sorted(mmcompress.factory.SHIPPED_CONFIGS.rglob("*.yaml")):
    if path.parent.name == "train":
        recipes[path.stem] = load_recipe(path.stem)["task"]
    else:
        built[path.stem] = create_compressor(path.stem if list_configs()[path.stem] == path else path).name
print(json.dumps({"package": mmcompress.__file__, "listed": sorted(list_configs()), "built": built,
                  "recipes": recipes, "by_repo_path": create_compressor("configs/hard/truncate-tail.yaml").name}))
"""


@pytest.mark.slow
def test_wheel_install_lists_and_loads_every_shipped_config(tmp_path):
    wheels, site, elsewhere, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd", tmp_path / "source"
    elsewhere.mkdir()
    # a clean copy of what the wheel is built from: no build/ or egg-info left by an earlier build can add files
    shutil.copytree(REPO / "mmcompress", source / "mmcompress", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("mmcompress-*.whl")
    shipped = sorted(str(p.relative_to(REPO)) for p in SHIPPED.rglob("*.yaml"))
    assert set(shipped) <= set(zipfile.ZipFile(wheel).namelist())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, env=env, cwd=tmp_path)

    run_env = {**env, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK], check=True, env=run_env, cwd=elsewhere, capture_output=True,
                         text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site), "the installed copy, not the repository, was imported"
    compressor_configs = [p for p in SHIPPED.rglob("*.yaml") if p.parent.name != "train"]
    recipe_files = [p for p in SHIPPED.rglob("*.yaml") if p.parent.name == "train"]
    assert {p.stem for p in SHIPPED.rglob("*.yaml")} == set(result["listed"])
    assert set(result["built"]) == {p.stem for p in compressor_configs} and all(result["built"].values())
    assert set(result["recipes"]) == {p.stem for p in recipe_files} and all(result["recipes"].values())
    assert result["by_repo_path"] == "truncate"
