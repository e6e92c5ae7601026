"""The shared trainer: learns, optimises only trainable parameters, checkpoints them alone, resumes exactly."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from mmcompress.cli import main
from mmcompress.errors import ConfigError
from mmcompress.training import TaskSetup, TrainConfig, Trainer, checkpoints, register_task, run_recipe
from mmcompress.training.tasks import TASKS


class Pairs(Dataset):
    """y = x @ W for a fixed random W: a mapping a linear layer can learn."""

    def __init__(self, n=256, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, dim, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Regressor(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.frozen = nn.Linear(dim, dim)  # stands in for a frozen base model
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(dim, dim)

    def training_step(self, batch):
        loss = nn.functional.mse_loss(self.head(batch["x"]) + 0 * self.frozen(batch["x"]), batch["y"])
        return {"loss": loss, "abs_err": (self.head(batch["x"]) - batch["y"]).abs().mean().detach()}


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=60, batch_size=16, lr=5e-2, schedule="constant",
                log_every=10, progress=False)
    return TrainConfig(**{**base, **kw})


def test_trainer_learns_and_logs(tmp_path):
    module = Regressor()
    frozen_before = module.frozen.weight.clone()
    data = Pairs()
    first = nn.functional.mse_loss(module.head(data.x), data.y).item()
    result = Trainer(module, _config(tmp_path, max_steps=150), data, eval_dataset=Pairs(64, seed=1)).train()
    last = nn.functional.mse_loss(module.head(data.x), data.y).item()
    assert last < 0.05 * first
    assert torch.equal(module.frozen.weight, frozen_before)  # frozen parameters never move
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_logs = [l for l in lines if "loss" in l]
    assert [l["step"] for l in train_logs] == list(range(10, 151, 10))
    assert train_logs[-1]["loss"] < train_logs[0]["loss"]
    assert "abs_err" in train_logs[0] and "eval/loss" in lines[-1]
    assert result.steps == 150


def test_checkpoint_holds_only_trainable_parameters_and_resume_is_exact(tmp_path):
    from safetensors.torch import load_file

    data = Pairs()
    torch.manual_seed(0)
    straight = Regressor()
    Trainer(straight, _config(tmp_path / "a", max_steps=40, grad_accum=2), data).train()

    torch.manual_seed(0)
    interrupted = Regressor()
    Trainer(interrupted, _config(tmp_path / "b", max_steps=20, grad_accum=2, save_every=10), data).train()
    saved = checkpoints(tmp_path / "b" / "run")
    assert [p.name for p in saved] == ["checkpoint-10", "checkpoint-20"]
    assert set(load_file(str(saved[-1] / "trainable.safetensors"))) == {"head.weight", "head.bias"}

    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG state or the fresh init
    resumed = Regressor()
    Trainer(resumed, _config(tmp_path / "b", max_steps=40, grad_accum=2, resume=True), data).train()
    assert torch.allclose(resumed.head.weight, straight.head.weight, atol=1e-6)
    # each piece of the run names the machine it trained on
    pieces = [json.loads(line) for line in (tmp_path / "b" / "run" / "machines.jsonl").read_text().splitlines()]
    assert [p["start_step"] for p in pieces] == [0, 20]
    assert all(p["machine"]["cores"] == os.cpu_count() and p["machine"]["torch"] == torch.__version__ for p in pieces)


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(ConfigError, match="unknown train settings"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    module = Regressor()
    module.head.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Trainer(module, _config(tmp_path), Pairs())


def test_yaml_no_is_the_documented_mixed_precision_value():
    # `mixed_precision: no` in a recipe (or --set train.mixed_precision=no) reaches the config as YAML 1.1's false
    parsed = yaml.safe_load("mixed_precision: no")
    assert TrainConfig.from_dict(parsed).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig.from_dict({"mixed_precision": True})


def test_numbers_yaml_reads_as_strings_are_numbers_or_clear_errors():
    # YAML 1.1 reads `lr: 5e-4` (no dot) as the string "5e-4"; the optimizer must get a float
    config = TrainConfig.from_dict(yaml.safe_load("lr: 5e-4\nmax_steps: '20'\nweight_decay: 0"))
    assert config.lr == pytest.approx(5e-4) and isinstance(config.lr, float)
    assert config.max_steps == 20 and isinstance(config.max_steps, int)
    for bad in ({"lr": "fast"}, {"max_steps": 2.5}, {"batch_size": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig.from_dict(bad)


@pytest.fixture
def toy_task():
    name = "toy_regression_test"
    if name not in TASKS:
        @register_task(name)
        def build(recipe):
            module = Regressor(dim=recipe["model"]["dim"])
            return TaskSetup(module, Pairs(dim=recipe["model"]["dim"]),
                             finalize=lambda m, out: torch.save(m.head.state_dict(), out / "final.pt"))
    return name


def test_train_cli_runs_a_recipe_and_resumes(tmp_path, toy_task, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"task: {toy_task}\nmodel: {{dim: 4}}\ntrain: {{max_steps: 5, batch_size: 8, save_every: 5, progress: false}}\n")
    out = tmp_path / "out"
    assert main(["train", "--config", str(recipe), "--output-dir", str(out)]) == 0
    assert (out / "final.pt").exists() and (out / "recipe.yaml").exists()
    assert main(["train", "--config", str(recipe), "--output-dir", str(out), "--resume",
                 "--set", "train.max_steps=8"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 8
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_run_recipe_rejects_unknown_task(tmp_path):
    from mmcompress.errors import UnknownCompressorError

    with pytest.raises(UnknownCompressorError, match="training task"):
        run_recipe({"task": "no_such_task", "train": {"output_dir": str(tmp_path)}})


class AutocastProbe(Regressor):
    """Records the dtype the head computes in: bf16 only when the trainer enters autocast around training_step."""

    dtypes: list

    def training_step(self, batch):
        out = self.head(batch["x"])
        self.dtypes.append(out.dtype)
        return {"loss": nn.functional.mse_loss(out.float(), batch["y"])}


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose precision cannot change; start and leave it clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("precision, expected", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_mixed_precision_reaches_training_step(tmp_path, precision, expected, fresh_accelerator_state):
    module = AutocastProbe()
    module.dtypes = []
    cfg = _config(tmp_path, max_steps=2, mixed_precision=precision, eval_every=1)
    Trainer(module, cfg, Pairs(32), eval_dataset=Pairs(16, seed=1)).train()
    assert module.dtypes and set(module.dtypes) == {expected}  # training and evaluation steps alike


# ------------------------------------------------------------------------------------- checkpoint safety
class _Planted:
    """A pickle that creates a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_planted_pickle_in_a_checkpoint_does_not_run(tmp_path):
    Trainer(Regressor(), _config(tmp_path, max_steps=10, save_every=10), Pairs()).train()
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Planted(marker)}, tmp_path / "run" / "checkpoint-10" / "state.pt")
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        Trainer(Regressor(), _config(tmp_path, max_steps=20, resume=True), Pairs()).train()
    assert not marker.exists()


def test_checkpoint_state_loads_with_weights_only(tmp_path):
    Trainer(Regressor(), _config(tmp_path, max_steps=10, save_every=10), Pairs()).train()
    state = torch.load(tmp_path / "run" / "checkpoint-10" / "state.pt", weights_only=True)
    assert state["step"] == 10 and state["optimizer"]["state"]


def _recipe(tmp_path, task, dim=4, **train):
    out = tmp_path / "recipe.yaml"
    out.write_text(yaml.safe_dump({"task": task, "model": {"dim": dim},
                                   "train": {"max_steps": 5, "batch_size": 8, "save_every": 5, "progress": False,
                                             **train}}))
    return str(out)


def test_resume_refuses_a_different_model(tmp_path, toy_task, capsys):
    out = str(tmp_path / "out")
    assert main(["train", "--config", _recipe(tmp_path, toy_task, dim=4), "-o", out]) == 0
    capsys.readouterr()
    assert main(["train", "--config", _recipe(tmp_path, toy_task, dim=6), "-o", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.dim: 4 -> 6" in err and len(err.strip().splitlines()) == 1
    # direct Trainer use: a checkpoint of another shape is refused with the parameter named, not a torch traceback
    Trainer(Regressor(dim=8), _config(tmp_path, max_steps=5, save_every=5), Pairs()).train()
    with pytest.raises(ConfigError, match="head.weight"):
        Trainer(Regressor(dim=4), _config(tmp_path, max_steps=10, resume=True), Pairs(dim=4)).train()


def test_a_fresh_run_refuses_a_used_folder_unless_overwrite(tmp_path, toy_task, capsys):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, toy_task, max_steps=20, log_every=1)
    assert main(["train", "--config", recipe, "-o", str(out)]) == 0  # an older, longer run: checkpoints 15, 20
    capsys.readouterr()
    short = _recipe(tmp_path, toy_task, max_steps=10, log_every=1)
    assert main(["train", "--config", short, "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--config", short, "-o", str(out), "--overwrite"]) == 0
    # the new run's own checkpoints survive, the old run's log lines are gone
    assert [p.name for p in checkpoints(out)] == ["checkpoint-5", "checkpoint-10"]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_resume_continues_only_its_own_checkpoints_and_logs_each_step_once(tmp_path):
    import shutil

    cfg = dict(save_every=5, log_every=1, keep_checkpoints=2)
    Trainer(Regressor(), _config(tmp_path, max_steps=12, **cfg), Pairs()).train()  # stopped after checkpoint-10
    run = tmp_path / "run"
    foreign = run / "checkpoint-100"  # another run's checkpoint with a higher number
    shutil.copytree(run / "checkpoint-10", foreign)
    meta = json.loads((foreign / "checkpoint.json").read_text())
    (foreign / "checkpoint.json").write_text(json.dumps({**meta, "run_id": "another-run", "step": 100}))
    result = Trainer(Regressor(), _config(tmp_path, max_steps=20, resume=True, **cfg), Pairs()).train()
    assert result.steps == 20 and result.start_step == 10
    assert [p.name for p in checkpoints(run)] == ["checkpoint-15", "checkpoint-20", "checkpoint-100"]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    # the rate counts this run's 10 steps over this run's time
    assert result.steps_per_second * result.seconds == pytest.approx(10)


def test_overwrite_with_resume_starts_fresh(tmp_path):
    Trainer(Regressor(), _config(tmp_path, max_steps=10, save_every=5), Pairs()).train()
    result = Trainer(Regressor(), _config(tmp_path, max_steps=5, resume=True, overwrite=True), Pairs()).train()
    assert result.start_step == 0 and result.steps == 5 and checkpoints(tmp_path / "run") == []


def test_lr_schedule_keeps_its_length_when_trained_in_pieces(tmp_path):
    """Raising max_steps point by point (as the reconstruction-curve benchmark does) must follow the one-shot decay,
    not restart it at every piece."""
    def lrs(pieces):
        torch.manual_seed(0)
        trainer = Trainer(Regressor(), _config(tmp_path / str(pieces), max_steps=40, schedule="cosine", log_every=1),
                          Pairs())
        for stop in pieces:
            trainer.config.max_steps = stop
            trainer.train()
        return [r["lr"] for r in trainer.history if "lr" in r]

    one_shot, in_pieces = lrs([40]), lrs([10, 20, 40])
    assert in_pieces == pytest.approx(one_shot)
    assert one_shot[9] > 0.5 * one_shot[0]  # a quarter of the way in, the cosine has barely started to decay
