"""The shared trainer: one loop for every trainable part of the toolkit (soft encoders, projectors, adapters,
token classifiers), on ``accelerate``.

The module trained is any ``nn.Module`` with

- ``training_step(batch) -> dict`` holding ``"loss"`` (a scalar tensor) and optional float metrics,
- optionally ``evaluation_step(batch) -> dict[str, float]`` (default: the training loss without gradients),
- optionally ``save_pretrained(path)`` (called by the task's ``finalize``).

Only parameters with ``requires_grad=True`` are optimised and checkpointed, so a frozen base LLM is never copied
into a checkpoint. A checkpoint holds those parameters (safetensors), the optimizer and scheduler states, the step
and the RNG states, in a form ``torch.load(weights_only=True)`` reads; ``resume=True`` continues from the latest
checkpoint of the same run in ``output_dir`` with the same data order (see :mod:`.run_folder` for which run owns a
folder, and why a fresh run refuses a non-empty one unless ``overwrite=True``).

Single CPU or GPU runs as is; several processes (GPUs, or CPU processes over gloo), DeepSpeed or FSDP through
``torchrun`` / ``accelerate launch`` (docs/training.md): the processes train one model and share one run folder.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config_base import Config
from ..errors import ConfigError
from ..models.compile import compile_blocks
from ..models.switchback import int8_frozen_linears
from .run_folder import (
    CHECKPOINT_PREFIX,
    MACHINES_FILE,
    ORDER_SETTINGS,
    RunClaim,
    checkpoint_step,
    checkpoints,
    claim_for_processes,
    load_state,
    rng_state,
    run_checkpoints,
    set_rng_state,
    write_checkpoint_file,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(Config):
    """Optimisation settings (a recipe's ``train:`` section)."""

    output_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int | None = None
    save_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0
    resume: bool | str = False
    overwrite: bool = False  # a fresh run may replace the previous run's checkpoints and log in output_dir
    # torch.compile: "layers" compiles each decoder layer (soft steps 1.22x faster on CPU after minutes of
    # compiling); "step" the whole training step (did not finish compiling on 2 cores); true means "layers"
    compile: bool | str = False
    # "int8": the frozen linear layers' matmuls (forward and input gradient) in int8 while training, SwitchBack
    # (mmcompress/models/switchback.py; CPU only, a VNNI int8 matmul is 2x a bfloat16 one); "native": their dtype
    frozen_matmuls: str = "native"
    # the next-token loss of soft methods: "chunked" (LM head and cross-entropy fused over chunks of the labelled rows,
    # never all their logits at once) or "sliced" (all labelled rows' logits at once, what trained every run before
    # 2026-12-08: reproduces them bit for bit); the same loss up to summation order
    lm_loss: str = "chunked"
    progress: bool = True

    def __post_init__(self) -> None:
        # recipes are read with mmcompress.yaml_io (YAML 1.2 scalars); a dict from plain yaml.safe_load (YAML 1.1) or
        # from Python may still hold `no` as False and `5e-4` as a string
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        super().__post_init__()  # type checks; numbers given as strings become numbers here, not deep in torch
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"schedule must be constant, linear or cosine, got {self.schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        self.compile = {False: "no", True: "layers"}.get(self.compile, self.compile)
        if self.compile not in ("no", "layers", "step"):
            raise ConfigError(f"compile must be no, layers or step (or false / true), got {self.compile!r}")
        if self.frozen_matmuls not in ("native", "int8"):
            raise ConfigError(f"frozen_matmuls must be native or int8, got {self.frozen_matmuls!r}")
        if self.lm_loss not in ("chunked", "sliced"):
            raise ConfigError(f"lm_loss must be chunked or sliced, got {self.lm_loss!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"unknown train settings {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    last_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str = ""
    start_step: int = 0  # the step a resumed run started from: ``seconds`` covers only the steps after it

    @property
    def steps_per_second(self) -> float:
        return (self.steps - self.start_step) / self.seconds if self.seconds else 0.0


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    # The run length is read once: a caller that trains in pieces (raising max_steps point by point, as the
    # reconstruction-curve benchmark does) must not restart the decay at every piece.
    warmup, total, kind = config.warmup_steps, config.max_steps, config.schedule

    def schedule(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return schedule


class Trainer:
    """Train ``module`` on ``train_dataset`` under ``config``; see the module docstring for the contract."""

    def __init__(
        self,
        module: nn.Module,
        config: TrainConfig,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        collate_fn: Callable | None = None,
        *,
        identity: dict[str, Any] | None = None,
        claim: RunClaim | None = None,
    ):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        if not hasattr(module, "training_step"):
            raise ConfigError(f"{type(module).__name__} has no training_step(batch) method")
        self.config = config
        self.output_dir = Path(config.output_dir)
        # what a resumed run must share with the run it continues (run_recipe passes the recipe's identity)
        self.identity = identity if identity is not None else {
            "module": type(module).__qualname__, "train": {k: getattr(config, k) for k in ORDER_SETTINGS}}
        self.claim = claim
        # some trainable parameters may sit out a step (a marker of a task the batch lacks): DDP must not wait for them
        self.accelerator = Accelerator(cpu=not has_accelerator(), mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.grad_accum,
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(config.seed)
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters")
        self.param_names = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.train_dataset, self.collate_fn = train_dataset, collate_fn
        self.eval_loader = (
            DataLoader(eval_dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate_fn,
                       num_workers=config.num_workers)
            if eval_dataset is not None else None
        )
        # the step runs as a module's forward, so that a data-parallel wrapper (DDP over several processes) sees it:
        # DDP synchronises gradients only for what went through its forward; a bare training_step call would leave
        # every process training its own copy
        for sub in module.modules():  # a soft method's model (the interleaved model holds one inside)
            if hasattr(sub, "lm_loss"):
                sub.lm_loss = config.lm_loss
        if config.frozen_matmuls == "int8":  # before compiling, so that the compiled layers fuse the quantizing
            int8_frozen_linears(module)
        if config.compile == "layers":
            compile_blocks(module)
        elif config.compile == "no":
            warn_eager_bfloat16_attention(module)
        step = TrainingStep(module, compile=config.compile == "step")
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(step, self.optimizer, self.scheduler)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.history: list[dict[str, Any]] = []

    @property
    def trained_module(self) -> nn.Module:
        """The module being trained (without the data-parallel wrapper and the step around it)."""
        return self.accelerator.unwrap_model(self.module).trained

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.config
        if self.claim is None:
            self.claim = claim_for_processes(self.output_dir, self.identity, resume=cfg.resume, overwrite=cfg.overwrite,
                                             state=self.accelerator.state)
        if self.claim.resume_from is not None:
            self._resume(self.claim.resume_from)
            self.claim.resume_from = None  # a second train() call continues from where this one ends
        elif cfg.resume:
            logger.warning("resume requested but no checkpoint of this run in %s; starting fresh", self.output_dir)
        start_step = self.step
        log_file = self._open_log()
        self._stamp_machine(start_step)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not cfg.progress or not self.accelerator.is_main_process,
                   desc="train", dynamic_ncols=True)
        self.module.train()
        t_start, t_window, loss_window, last_loss = time.perf_counter(), time.perf_counter(), [], float("nan")
        metrics_window: dict[str, list[float]] = {}
        batches = self._batches()
        try:
            while self.step < cfg.max_steps:
                for _ in range(cfg.grad_accum):
                    batch = next(batches)
                    with self.accelerator.accumulate(self.module):
                        # entered here too, so the step and the evaluation (not through forward) share one precision
                        with self.accelerator.autocast():
                            out = self.module(batch)
                        loss = out["loss"]
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients and cfg.max_grad_norm:
                            self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                        self.optimizer.step()  # no-ops until the last micro-batch of an accumulation
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    loss_window.append(float(loss.detach()))
                    for k, v in out.items():
                        if k != "loss":
                            metrics_window.setdefault(k, []).append(float(v))
                self.step += 1
                bar.update(1)
                last_loss = loss_window[-1]
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    now = time.perf_counter()
                    record = {"step": self.step, "loss": float(np.mean(loss_window)), "lr": self.scheduler.get_last_lr()[0],
                              "steps_per_s": len(loss_window) / cfg.grad_accum / max(now - t_window, 1e-9),
                              **{k: float(np.mean(v)) for k, v in metrics_window.items()}}
                    self._log(record, log_file)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    loss_window, metrics_window, t_window = [], {}, now
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_loader is not None:
                    self._log({"step": self.step, **{f"eval/{k}": v for k, v in self.evaluate().items()}}, log_file)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
            log_file.close()
        if self.eval_loader is not None and (not cfg.eval_every or cfg.max_steps % cfg.eval_every):
            with (self.output_dir / "log.jsonl").open("a") as f:
                self._log({"step": self.step, **{f"eval/{k}": v for k, v in self.evaluate().items()}}, f)
        return TrainResult(steps=self.step, seconds=time.perf_counter() - t_start, last_loss=last_loss,
                           history=self.history, output_dir=str(self.output_dir), start_step=start_step)

    def _stamp_machine(self, start_step: int) -> None:
        """Append the machine this piece of the run trains on to ``machines.jsonl`` (a run in pieces with --resume
        may move between machines), so a reported wall time names its machine."""
        if self.accelerator.is_main_process:
            from ..machine import machine_stamp

            record = {"start_step": start_step, "processes": self.accelerator.num_processes,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_stamp()}
            with (self.output_dir / MACHINES_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _open_log(self):
        """The run's log for appending: records after the resumed step (written before an interruption, and about
        to be written again) are dropped, so every step appears once."""
        path = self.output_dir / "log.jsonl"
        kept = []
        if self.step and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue
        if self.accelerator.is_main_process:
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return path.open("a", encoding="utf-8")

    def _batches(self):
        """Endless batches, epoch after epoch. Each epoch's order is a function of (seed, epoch) alone, so a resumed
        run skips the batches it has seen and then sees exactly what an uninterrupted run would."""
        while True:
            order = torch.randperm(len(self.train_dataset), generator=torch.Generator().manual_seed(self.config.seed + self.epoch))
            per_step = self.config.batch_size * self.accelerator.num_processes
            loader = DataLoader(
                self.train_dataset, batch_size=self.config.batch_size, sampler=order[self.batches_in_epoch * per_step :].tolist(),
                collate_fn=self.collate_fn, num_workers=self.config.num_workers,
                drop_last=len(self.train_dataset) > per_step,
            )
            if self.accelerator.num_processes > 1:
                loader = self.accelerator.prepare_data_loader(loader)  # shards batches across processes
            for batch in loader:
                self.batches_in_epoch += 1
                yield _to_device(batch, self.accelerator.device)
            self.epoch += 1
            self.batches_in_epoch = 0

    def _log(self, record: dict[str, Any], file) -> None:
        record = {k: v for k, v in record.items() if v is not None}
        self.history.append(record)
        if self.accelerator.is_main_process:
            file.write(json.dumps(record) + "\n")
            file.flush()
        logger.info("%s", record)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of ``evaluation_step`` (or the training loss) over the eval set."""
        if self.eval_loader is None:
            return {}
        module = self.trained_module
        was_training = module.training
        module.eval()
        totals: dict[str, list[float]] = {}
        for i, batch in enumerate(self.eval_loader):
            if self.config.eval_batches is not None and i >= self.config.eval_batches:
                break
            batch = _to_device(batch, self.accelerator.device)
            if hasattr(module, "evaluation_step"):
                out = module.evaluation_step(batch)
            else:
                with self.accelerator.autocast():
                    out = {k: float(v) for k, v in module.training_step(batch).items()}
            for k, v in out.items():
                totals.setdefault(k, []).append(float(v))
        module.train(was_training)
        return {k: float(np.mean(v)) for k, v in totals.items()}

    # ----------------------------------------------------------------------------------------- checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.trained_module.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        path = self.output_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        if not self.accelerator.is_main_process:
            return path
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(tmp / "trainable.safetensors"))
        torch.save({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": self.step,
            "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "rng": rng_state(),
            "config": asdict(self.config),
        }, tmp / "state.pt")
        write_checkpoint_file(tmp, self.claim.run_id if self.claim else "", self.step, self.identity)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
        self._prune_checkpoints()
        return path

    def _prune_checkpoints(self) -> None:
        """Remove this run's older checkpoints beyond ``keep_checkpoints``; another run's are never touched."""
        import shutil

        run_id = self.claim.run_id if self.claim else ""
        own = [p for p in run_checkpoints(self.output_dir, run_id) if checkpoint_step(p) <= self.step]
        for old in own[: -self.config.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not (path / "state.pt").is_file():
            raise ConfigError(f"{path} is not a checkpoint (no state.pt)")
        try:
            weights = load_file(str(path / "trainable.safetensors"))
        except (OSError, SafetensorError) as e:
            raise ConfigError(f"checkpoint {path} has no readable trainable.safetensors: {e}") from None
        current = self.trainable_state()
        missing = [n for n in current if n not in weights]
        if missing:
            raise ConfigError(f"checkpoint {path} lacks trainable parameters {missing[:5]}: it belongs to another model")
        shapes = [f"{n} {tuple(weights[n].shape)} vs {tuple(t.shape)}" for n, t in current.items()
                  if weights[n].shape != t.shape]
        if shapes:
            raise ConfigError(f"checkpoint {path} was trained with a different model shape ({'; '.join(shapes[:3])})")
        state = load_state(path / "state.pt")
        self.trained_module.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        set_rng_state(state["rng"])
        logger.warning("resumed from %s at step %d", path, self.step)


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator). Without one, accelerate must be told it runs on CPU, or
    processes started by ``torchrun`` would each train alone instead of as one data-parallel run (gloo)."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def process_state():
    """accelerate's state of the processes of this run (one, or several started by ``torchrun`` / ``accelerate
    launch``), on CPU when there is no accelerator; made before any model loads, shared by the trainer."""
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator())


def warn_eager_bfloat16_attention(module: nn.Module) -> bool:
    """Warn when a bfloat16 transformers model inside ``module`` trains with eager attention, uncompiled: its
    gradients may be far from float32's (relative error 2.0 on SmolLM2's 4x meanpool step, against 0.05-0.06 with
    SDPA or compiled layers; ``benchmarks/soft_grad_precision.py``). Returns whether it warned."""
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if (getattr(config, "_attn_implementation", None) == "eager" and hasattr(sub, "get_input_embeddings")
                and sub.get_input_embeddings().weight.dtype == torch.bfloat16):
            logger.warning("training %s in bfloat16 with eager attention, uncompiled: its gradients may stray far "
                           "from float32's (SmolLM2's did); set model_kwargs: {attn_implementation: sdpa} or "
                           "train.compile: layers (docs/training.md)", type(sub).__name__)
            return True
    return False


class TrainingStep(nn.Module):
    """``trained.training_step(batch)`` as a forward pass (optionally under ``torch.compile``)."""

    def __init__(self, trained: nn.Module, compile: bool = False):
        super().__init__()
        self.trained = trained
        self._step = torch.compile(trained.training_step) if compile else trained.training_step

    def forward(self, batch: Any) -> dict[str, Any]:
        return self._step(batch)


def _to_device(batch: Any, device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
