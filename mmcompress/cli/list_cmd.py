"""``mmcompress list``: registered methods (by family) and shipped configs."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list compression methods and shipped configs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..factory import list_configs, list_trained, load_config_file, trained_card
    from ..models.loading import DEFAULT_MODEL, describe_model
    from ..registry import COMPRESSORS

    methods = [
        {"name": name, "family": getattr(cls, "family", ""), "summary": _summary(cls)}
        for name, cls in COMPRESSORS.items()
    ]
    configs, recipes = [], []
    for stem, path in list_configs().items():
        task = _recipe_task(path)
        if task is not None:  # a training recipe (``task:``), run by ``mmcompress train``, not a compressor config
            recipes.append({"name": stem, "task": task, "path": str(path)})
            continue
        try:
            method = load_config_file(path)[0]
        except Exception as e:  # a broken config is listed, not fatal
            method = f"(unreadable: {e})"
        configs.append({"name": stem, "compressor": method, "path": str(path)})
    trained = [{"name": name, "path": str(path), **trained_card(name)} for name, path in list_trained().items()]
    default_model = {"name": DEFAULT_MODEL, "loads": describe_model(DEFAULT_MODEL)}
    if args.json:
        print(json.dumps({"default_model": default_model, "methods": methods, "trained": trained, "configs": configs,
                          "recipes": recipes}, indent=2))
        return 0
    print(f"default model: {DEFAULT_MODEL} -> {default_model['loads']}")
    print("methods:")
    for m in methods:
        print(f"  {m['name']:<22} {m['family']:<8} {m['summary']}")
    if trained:
        print("trained (shipped weights, load by name):")
        for t in trained:
            numbers = ", ".join(f"{k} {v}" for k, v in (t.get("heldout") or {}).items())
            squad = t.get("squad") or {}
            print(f"  {t['name']:<22} {t.get('method', '?'):<8} {t.get('ratio', '?')}x on {t.get('base_model', '?')}"
                  + (f"; held-out {numbers}" if numbers else "")
                  + (f"; SQuAD ({squad['questions']} held-out questions) F1 {squad['f1']} ({squad['f1_of_full']:.0%} of "
                     f"the full context), contains {squad['contains']} ({squad['contains_of_full']:.0%})" if squad else ""))
    print("configs:")
    for c in configs:
        print(f"  {c['name']:<34} -> {c['compressor']}")
    if recipes:
        print("training recipes (mmcompress train --config PATH):")
        for r in recipes:
            print(f"  {r['name']:<34} -> task {r['task']}")
    return 0


def _recipe_task(path) -> str | None:
    """The ``task:`` of a training recipe (a YAML mapping with ``task`` and no ``compressor``), else None."""
    import yaml

    from ..yaml_io import load_yaml

    try:
        data = load_yaml(open(path, encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and "task" in data and "compressor" not in data:
        return str(data["task"])
    return None


def _summary(cls) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""
