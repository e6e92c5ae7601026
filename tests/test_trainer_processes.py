"""Data-parallel training over several processes on CPU (``torchrun``, gloo over loopback): the processes train one
model - gradients are averaged, so every process holds the same weights, the same as one process with the whole
batch - and they share one run folder (one claim, one log, checkpoints and the final result written once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mmcompress.training import run_recipe
from test_trainer import Pairs, Regressor

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import sys, torch
from pathlib import Path
from test_trainer import Pairs, Regressor
from mmcompress.training import TaskSetup, register_task, run_recipe
from mmcompress.training.trainer import process_state

trained = []

@register_task("toy_regression_ddp")
def build(recipe):
    trained.append(Regressor(dim=4))
    return TaskSetup(trained[-1], Pairs(dim=4), finalize=lambda m, out: torch.save(m.head.state_dict(), out / "final.pt"))

out = Path(sys.argv[1])
train = {"output_dir": str(out / "run"), "max_steps": 6, "batch_size": int(sys.argv[2]), "lr": 0.05,
         "schedule": "constant", "save_every": 3, "log_every": 1, "progress": False}
run_recipe({"task": "toy_regression_ddp", "model": {}, "train": train})
state = process_state()
torch.save(trained[-1].head.weight.detach(), out / f"trained_by_{state.process_index}.pt")
'''


def _toy_task():
    from mmcompress.training import TaskSetup, register_task
    from mmcompress.training.tasks import TASKS

    if "toy_regression_ddp" not in TASKS:
        @register_task("toy_regression_ddp")
        def build(recipe):
            return TaskSetup(Regressor(dim=4), Pairs(dim=4),
                             finalize=lambda m, out: torch.save(m.head.state_dict(), out / "final.pt"))


def test_two_processes_train_one_model_as_one_process_with_the_whole_batch(tmp_path):
    script = tmp_path / "train_two.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("ACCELERATE_USE_CPU", None)  # found out by the trainer, not set by hand
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), "4"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    # one claim, one log with every step once, checkpoints of that run only
    assert json.loads((run / "run.json").read_text())["run_id"]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert {json.loads((c / "checkpoint.json").read_text())["run_id"] for c in run.glob("checkpoint-*")} == {
        json.loads((run / "run.json").read_text())["run_id"]}
    # both processes hold the same weights, the ones saved ...
    seen = [torch.load(tmp_path / f"trained_by_{rank}.pt") for rank in (0, 1)]
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], torch.load(run / "final.pt")["weight"])
    # ... the ones a single process trains with both processes' batches together (batch 8)
    _toy_task()
    single = tmp_path / "single"
    run_recipe({"task": "toy_regression_ddp", "model": {},
                "train": {"output_dir": str(single), "max_steps": 6, "batch_size": 8, "lr": 0.05,
                          "schedule": "constant", "progress": False}})
    alone = torch.load(single / "final.pt")["weight"]
    assert torch.allclose(seen[0], alone, atol=1e-5)
    # and a single process with its own batch of 4 would have ended elsewhere
    half = tmp_path / "half"
    run_recipe({"task": "toy_regression_ddp", "model": {},
                "train": {"output_dir": str(half), "max_steps": 6, "batch_size": 4, "lr": 0.05,
                          "schedule": "constant", "progress": False}})
    assert not torch.allclose(seen[0], torch.load(half / "final.pt")["weight"], atol=1e-3)


class _Processes:
    """accelerate's process state as the second of two processes sees it (the barrier already passed)."""

    num_processes, is_main_process = 2, False

    def wait_for_everyone(self):
        pass


def test_the_other_processes_take_the_main_processes_claim(tmp_path):
    from mmcompress.training.run_folder import claim_for_processes, claim_output_dir

    identity = {"task": "x"}
    main = claim_output_dir(tmp_path / "run", identity)
    other = claim_for_processes(tmp_path / "run", identity, state=_Processes())
    assert other.run_id == main.run_id and other.resume_from is None
    (tmp_path / "run" / "checkpoint-3").mkdir()
    (tmp_path / "run" / "checkpoint-3" / "checkpoint.json").write_text(json.dumps({"run_id": main.run_id, "step": 3}))
    resumed = claim_for_processes(tmp_path / "run", identity, resume=True, state=_Processes())
    assert resumed.run_id == main.run_id and resumed.resume_from == tmp_path / "run" / "checkpoint-3"
