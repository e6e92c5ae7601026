"""The output folder of a training run: which run owns it, which checkpoints are its own, and how they load safely.

A run writes ``run.json`` (a run id and its *identity*: the recipe without the settings that may change on resume,
such as ``max_steps``) into its output folder before any expensive work. From then on:

- a fresh run refuses a non-empty folder (``overwrite`` clears the previous run's checkpoints and log first);
- ``resume`` continues only the run whose identity matches (a different ``lora_r``, model or task is an error that
  names the differing fields), and only from checkpoints stamped with that run's id;
- pruning removes only the run's own older checkpoints, never another run's.

Checkpoint state (optimizer, scheduler, step, RNG) is saved as plain tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)``: a planted pickle cannot run code.
"""
from __future__ import annotations

import json
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

CHECKPOINT_PREFIX = "checkpoint-"
RUN_FILE = "run.json"
MACHINES_FILE = "machines.jsonl"  # one line per start (fresh or resumed): the step it started at and the machine
CHECKPOINT_FILE = "checkpoint.json"
# train settings that fix the data order and so must match on resume; the others (max_steps, lr...) may change
ORDER_SETTINGS = ("seed", "batch_size", "grad_accum")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders in ``output_dir``, oldest first (whichever run wrote them)."""
    root = Path(output_dir)
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def recipe_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: every recipe section but ``train``, plus the train
    settings that fix the data order."""
    train = recipe.get("train") or {}
    return {**{k: v for k, v in recipe.items() if k != "train"},
            "train": {k: train[k] for k in ORDER_SETTINGS if k in train}}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every dotted key whose value differs (JSON-normalised)."""
    a, b = _flatten(json.loads(json.dumps(saved, default=str))), _flatten(json.loads(json.dumps(current, default=str)))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(unset)") != b.get(k, "(unset)")]


@dataclass
class RunClaim:
    """A run's hold on its output folder: its id, and the checkpoint to resume from (None: start at step 0)."""

    output_dir: Path
    run_id: str
    resume_from: Path | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} {path} is not a JSON object")
    return value


def run_checkpoints(output_dir: Path, run_id: str | None) -> list[Path]:
    """The checkpoints in ``output_dir`` written by run ``run_id`` (another run's are not its to resume or prune)."""
    return [p for p in checkpoints(output_dir) if checkpoint_run_id(p) == run_id]


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def checkpoint_run_id(path: Path) -> str | None:
    meta = path / CHECKPOINT_FILE
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def clear_run(output_dir: Path) -> None:
    """Remove what a training run wrote (checkpoints, log, run file); other files (the task's final model) stay,
    to be replaced by the new run's."""
    for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for name in (RUN_FILE, MACHINES_FILE, "log.jsonl", "recipe.yaml"):
        (output_dir / name).unlink(missing_ok=True)


def claim_output_dir(output_dir: str | Path, identity: dict[str, Any], *, resume: bool | str = False,
                     overwrite: bool = False) -> RunClaim:
    """Check that this run may write into ``output_dir`` and record it there (see the module docstring)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output folder {output_dir} is a file")
    way_out = "choose another output folder, or pass --overwrite (train.overwrite=true) to replace it"
    run_file = output_dir / RUN_FILE
    if overwrite and output_dir.is_dir():
        clear_run(output_dir)
        resume = False  # nothing of the replaced run is left to continue
    owner = _read_json(run_file, "run file") if run_file.is_file() else None
    if owner is not None:
        diffs = identity_differences(owner.get("identity", {}), identity)
        if diffs and resume:
            raise ConfigError(f"cannot resume the run in {output_dir}: it was trained with different settings "
                              f"({'; '.join(diffs[:6])}); {way_out}")
    if resume:
        if isinstance(resume, str):
            return _claim_explicit(output_dir, Path(resume), identity, owner, way_out)
        if owner is None:
            if output_dir.is_dir() and any(output_dir.iterdir()):
                raise ConfigError(f"cannot resume in {output_dir}: it holds no mmcompress run ({RUN_FILE} missing) but "
                                  f"is not empty; {way_out}")
            return _fresh(output_dir, identity)
        own = run_checkpoints(output_dir, owner["run_id"])
        return RunClaim(output_dir, owner["run_id"], own[-1] if own else None)
    if not overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        what = "a training run" if owner is not None else "files"
        raise ConfigError(f"output folder {output_dir} already holds {what}; pass --resume (train.resume=true) to "
                          f"continue that run, or {way_out}")
    return _fresh(output_dir, identity)


def claim_for_processes(output_dir: str | Path, identity: dict[str, Any], *, resume: bool | str = False,
                        overwrite: bool = False, state: Any = None) -> RunClaim:
    """:func:`claim_output_dir` for a run trained by several processes (``state``: accelerate's process state): the
    main process checks and claims the folder, then the others take the same claim (run id, checkpoint to resume
    from). Each claiming for itself, the second would find the folder the first just claimed and refuse it. Should
    the main process refuse the folder, it exits and the launcher stops the others waiting here."""
    if state is None or state.num_processes == 1:
        return claim_output_dir(output_dir, identity, resume=resume, overwrite=overwrite)
    claim = claim_output_dir(output_dir, identity, resume=resume, overwrite=overwrite) if state.is_main_process else None
    state.wait_for_everyone()
    if claim is not None:
        return claim
    output_dir = Path(output_dir)
    owner = _read_json(output_dir / RUN_FILE, "run file")
    if isinstance(resume, str):
        return RunClaim(output_dir, owner["run_id"], Path(resume))
    own = run_checkpoints(output_dir, owner["run_id"]) if resume and not overwrite else []
    return RunClaim(output_dir, owner["run_id"], own[-1] if own else None)


def _claim_explicit(output_dir: Path, path: Path, identity: dict[str, Any], owner: dict[str, Any] | None,
                    way_out: str) -> RunClaim:
    if not (path / "state.pt").is_file() or not (path / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"{path} is not a checkpoint written by this version of mmcompress (no state.pt and "
                          f"{CHECKPOINT_FILE}); start again with --overwrite")
    meta = _read_json(path / CHECKPOINT_FILE, "checkpoint file")
    diffs = identity_differences(meta.get("identity", {}), identity)
    if diffs:
        raise ConfigError(f"cannot resume from {path}: it was trained with different settings ({'; '.join(diffs[:6])})")
    if owner is not None and owner.get("run_id") != meta.get("run_id"):
        raise ConfigError(f"{output_dir} holds another run than the one {path} belongs to; {way_out}")
    if owner is None and output_dir.is_dir() and any(output_dir.iterdir()):
        raise ConfigError(f"output folder {output_dir} is not empty; {way_out}")
    later = [p.name for p in run_checkpoints(output_dir, meta.get("run_id")) if checkpoint_step(p) > int(meta.get("step", 0))]
    if later:
        raise ConfigError(f"{output_dir} holds later checkpoints of the same run ({', '.join(later)}); resuming from "
                          f"{path.name} would mix two histories: delete them first")
    _write_run_file(output_dir, meta["run_id"], identity)
    return RunClaim(output_dir, meta["run_id"], path)


def _fresh(output_dir: Path, identity: dict[str, Any]) -> RunClaim:
    run_id = uuid.uuid4().hex
    _write_run_file(output_dir, run_id, identity)
    return RunClaim(output_dir, run_id, None)


def _write_run_file(output_dir: Path, run_id: str, identity: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "identity": identity}, indent=2, default=str))


def write_checkpoint_file(path: Path, run_id: str, step: int, identity: dict[str, Any]) -> None:
    (path / CHECKPOINT_FILE).write_text(json.dumps({"run_id": run_id, "step": step, "identity": identity},
                                                   indent=2, default=str))


# ------------------------------------------------------------------------------------------- RNG, safe form
def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, numbers and strings (what ``torch.load(weights_only=True)`` accepts)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(path: Path) -> dict[str, Any]:
    """``state.pt`` loaded with ``weights_only=True``; a file that needs arbitrary unpickling is an error."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        raise ConfigError(f"{path} cannot be loaded safely (torch.load weights_only=True refused it: "
                          f"{str(e).splitlines()[0][:200]}); it is corrupt, planted, or from an older mmcompress "
                          "- start again with --overwrite") from None
