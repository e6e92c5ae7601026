"""Training recipes: YAML files that name a *task* and set its model, data and optimisation.

    task: icae                # a registered task
    model: {...}              # task-specific
    data: {...}               # task-specific
    train: {max_steps: 2000, batch_size: 8, lr: 1e-4, output_dir: runs/icae}   # TrainConfig fields
    stages:                   # optional: a schedule of runs, each from the previous one's trained result
      - {name: warm, train: {max_steps: 600, lr: 1.0e-3}}
      - {name: anneal, train: {max_steps: 1500, lr: 5.0e-4, schedule: cosine}, model: {pool_ratio: 4}}

A task is a function ``build(recipe) -> TaskSetup``, registered with ``@register_task("name")`` next to the model it
trains (soft encoders, projectors, adapters, classifiers). ``mmcompress train --config recipe.yaml`` runs it.
"""
from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .run_folder import claim_for_processes, recipe_identity
from .trainer import TrainConfig, Trainer, TrainResult, process_state, set_seed

TASKS: Registry[Callable[[dict[str, Any]], TaskSetup]] = Registry("training task")


COMMON_SECTIONS = ("task", "model", "data", "train")


def register_task(name: str, *, sections: tuple[str, ...] = ()):
    """Decorator: make ``build(recipe) -> TaskSetup`` available to recipes under ``task: name``. A recipe may hold
    the common sections (task, model, data, train) and the task's own top-level ``sections``; any other key is an
    error (a typo such as ``init_frm`` must not silently train from scratch)."""
    def decorator(build: Callable[[dict[str, Any]], TaskSetup]):
        build.recipe_sections = (*COMMON_SECTIONS, *sections)
        return TASKS.register(name)(build)

    return decorator


def check_keys(where: str, values: Any, allowed: Any) -> dict[str, Any]:
    """``values`` as a dict, after refusing keys outside ``allowed`` (a recipe section must be a mapping)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe section {where} must be a mapping, got {values!r}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {where} setting(s) {unknown}; valid: {sorted(allowed)}")
    return dict(values)


@dataclass
class TaskSetup:
    """What a task builds: the module to train, its data, and how to save the result."""

    module: Any
    train_dataset: Any
    eval_dataset: Any = None
    collate_fn: Callable | None = None
    finalize: Callable[[Any, Path], Any] | None = None  # e.g. lambda m, out: m.save_pretrained(out / "final")


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a recipe (a file, a ``configs/train/...`` path, or a shipped recipe's name such as ``icae-pretrain``) and
    apply dotted overrides (``{"train.max_steps": 10}``)."""
    import yaml

    from ..factory import find_recipe, resolve_config_path
    from ..yaml_io import load_yaml

    path = resolve_config_path(path)
    if not path.exists() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = find_recipe(str(path)) or path
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        recipe = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(recipe, dict) or "task" not in recipe:
        raise ConfigError(f"recipe {path} must be a mapping with a 'task:' key")
    return apply_overrides(recipe, overrides or {})


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    recipe = copy.deepcopy(recipe)
    for dotted, value in overrides.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for key in parents:  # a number indexes a list: stages.2.train.lr is the third stage's learning rate
            node = _list_item(node, key, dotted) if isinstance(node, list) else node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"cannot set {dotted}: {key} is not a section")
        if isinstance(node, list):
            _list_item(node, leaf, dotted)
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return recipe


def _list_item(items: list, key: str, dotted: str) -> Any:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"cannot set {dotted}: {key!r} is not an index of a list of {len(items)}")
    return items[int(key)]


def run_recipe(recipe: dict[str, Any]) -> TrainResult:
    """Build the recipe's task, train it with the shared trainer, then let the task save its result."""
    import yaml

    importlib.import_module("mmcompress")  # registers every family's tasks
    build = TASKS.get(recipe["task"])
    check_keys(f"top-level recipe key for task {recipe['task']!r}:", recipe,
               (*getattr(build, "recipe_sections", COMMON_SECTIONS), "stages"))
    if "stages" in recipe:
        return run_stages(recipe)
    config = TrainConfig.from_dict(recipe.get("train"))
    # the output folder is checked (and claimed) before the task loads any model
    identity = recipe_identity(recipe)
    state = process_state()
    claim = claim_for_processes(config.output_dir, identity, resume=config.resume, overwrite=config.overwrite,
                                state=state)
    set_seed(config.seed)  # the task's fresh parameters are initialised reproducibly
    setup = build(recipe)
    trainer = Trainer(setup.module, config, setup.train_dataset, setup.eval_dataset, setup.collate_fn,
                      identity=identity, claim=claim)
    output_dir = Path(config.output_dir)
    if state.is_main_process:
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = trainer.train()
    if setup.finalize is not None and trainer.accelerator.is_main_process:
        setup.finalize(trainer.trained_module, output_dir)
    state.wait_for_everyone()  # the next stage (or the caller) finds the result in place on every process
    return result


STAGE_KEYS = ("name", "model", "data", "train")


def stage_names(recipe: dict[str, Any]) -> list[str]:
    """The stage names of a staged recipe, in order (:func:`stage_recipes` checks them)."""
    return [stage["name"] for stage in recipe["stages"]]


def stage_recipes(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """One plain recipe per entry of ``stages``: the base recipe with the stage's sections merged in, its own
    ``output_dir/<i>-<name>`` folder, and (after the first) ``init_from`` the previous stage's trained result. A
    stage starts with a fresh optimizer and schedule; model fields may change between stages (e.g. a ratio
    curriculum), data and train fields too."""
    base = {k: v for k, v in recipe.items() if k != "stages"}
    stages = recipe["stages"]
    if not isinstance(stages, list) or not stages:
        raise ConfigError("recipe 'stages' must be a non-empty list of mappings")
    build = TASKS.get(recipe["task"])
    if len(stages) > 1 and "init_from" not in getattr(build, "recipe_sections", ()):
        raise ConfigError(f"task {recipe['task']!r} cannot continue from a trained result (no init_from), so it "
                          "cannot run in stages")
    root = Path(TrainConfig.from_dict(base.get("train")).output_dir)
    out, names = [], set()
    for i, stage in enumerate(stages, 1):
        stage = check_keys(f"key of stage {i}:", stage, STAGE_KEYS)
        name = stage.get("name")
        if not isinstance(name, str) or not name.isidentifier() or name in names:
            raise ConfigError(f"stage {i} needs a unique 'name' (letters, digits, _), got {name!r}")
        names.add(name)
        merged = copy.deepcopy(base)
        for section in ("model", "data", "train"):
            if section in stage:
                values = stage[section]  # its keys are checked by the task and TrainConfig, as the base's are
                values = check_keys(f"stage {name!r} {section}:", values, values if isinstance(values, dict) else ())
                merged[section] = {**(merged.get(section) or {}), **values}
        merged.setdefault("train", {})["output_dir"] = str(root / f"{i}-{name}")
        if out:
            merged["init_from"] = str(Path(out[-1]["train"]["output_dir"]) / "final")
        out.append(merged)
    return out


def run_stages(recipe: dict[str, Any]) -> TrainResult:
    """Run a staged recipe: each stage in turn; with ``resume``, stages whose result exists are skipped. The last
    stage's result is copied to ``<output_dir>/final``."""
    import shutil

    stages = stage_recipes(recipe)
    result = None
    for stage in stages:
        config = TrainConfig.from_dict(stage["train"])
        done = Path(config.output_dir) / "final"
        if config.resume and done.is_dir():
            continue  # finished in an earlier call
        result = run_recipe(stage)
    final = Path(stages[-1]["train"]["output_dir"]) / "final"
    if not final.is_dir():
        raise ConfigError(f"the last stage wrote no result in {final}; its task must save one to <output_dir>/final")
    target = Path(TrainConfig.from_dict(recipe.get("train")).output_dir) / "final"
    state = process_state()
    if state.is_main_process:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(final, target)
    state.wait_for_everyone()
    return result if result is not None else TrainResult(steps=0, seconds=0.0, last_loss=float("nan"), output_dir=str(target))
