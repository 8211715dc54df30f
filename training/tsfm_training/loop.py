"""The training loop shared by every recipe: one optimiser step per batch, checkpointed so a killed run resumes exactly.

``fit`` is deliberately ignorant of what is trained: the recipe hands it a model, an iterator of batches
(dicts of tensors), and ``loss_fn(model, batch) -> scalar tensor``. The loop owns everything around the
step: optimiser, learning-rate schedule, mixed precision, gradient clipping, a guard against non-finite
losses, TensorBoard scalars, a progress bar and ``output_dir/last.pt``.

Exact resume: ``last.pt`` holds the model, optimiser, scheduler, grad-scaler and every random generator
(Python, NumPy, torch CPU/CUDA) of every rank together with the step. Batches are drawn lazily from ``batches``; when the
iterator draws its randomness from those global generators, or exposes ``state_dict()`` /
``load_state_dict()`` itself, a resumed run sees the same batches and ends with the same weights as an
uninterrupted one. Under torchrun every rank must resume the same step from the same checkpoint; the
loop checks that before it trains (a node that does not see the shared output folder would otherwise
start from scratch beside the others).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsfm_training.config import settings

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("poly", "cosine", "constant", "step")
CHECKPOINT_NAME = "last.pt"

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Validate = Callable[[nn.Module, int], dict[str, float]]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


class ResumeMismatch(ValueError):
    """Ranks of one distributed run found different checkpoints (or none) to resume from."""


@dataclass
class LoopConfig:
    """Everything the loop needs besides model, data and loss. Steps count optimiser steps, not epochs.

    ``schedule``: ``poly`` is ``lr·(1 - t/steps)^poly_power`` (nnU-Net, power 0.9), ``cosine`` decays to
    ``min_lr`` after a linear warm-up (SuPreM), ``constant`` keeps ``lr``, ``step`` multiplies it by
    ``step_gamma`` every ``step_every`` steps (PyMIC's StepLR). ``warmup_steps`` applies to all.
    ``amp`` uses float16 with a gradient scaler on CUDA and bfloat16 autocast on the CPU.
    ``checkpoint_every`` 0 writes ``last.pt`` only at the end; ``validate_every`` 0 validates only at the end
    (when the recipe validates at all). ``global_batch_size`` is the batch of one optimiser step summed
    over all ranks (default: the recipe's ``data.batch_size``); each rank draws its share. ``lr`` and
    ``steps`` are taken as written whatever the number of ranks: scale them yourself with the batch.
    """

    steps: int
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "poly"
    warmup_steps: int = 0
    grad_clip: float | None = None
    amp: bool = False
    checkpoint_every: int = 0
    log_every: int = 10
    output_dir: str | Path = "out/training/train"
    seed: int = 0
    momentum: float = 0.99
    nesterov: bool = True
    poly_power: float = 0.9
    min_lr: float = 0.0
    step_every: int = 0
    step_gamma: float = 0.5
    max_nonfinite_steps: int = 10
    validate_every: int = 0
    global_batch_size: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"LoopConfig.steps must be >= 1, got {self.steps!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"LoopConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"LoopConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (float(self.lr) > 0):
            raise ValueError(f"LoopConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= int(self.warmup_steps) < max(1, int(self.steps)):
            raise ValueError(f"LoopConfig.warmup_steps must be in [0, steps), got {self.warmup_steps!r}")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise ValueError(f"LoopConfig.grad_clip must be > 0 or null, got {self.grad_clip!r}")
        if self.schedule == "step" and int(self.step_every) < 1:
            raise ValueError(f"LoopConfig.step_every must be >= 1 for the step schedule, got {self.step_every!r}")
        if self.global_batch_size is not None and int(self.global_batch_size) < 1:
            raise ValueError(f"LoopConfig.global_batch_size must be >= 1 or null, got {self.global_batch_size!r}")
        if int(self.validate_every) < 0:
            raise ValueError(f"LoopConfig.validate_every must be >= 0, got {self.validate_every!r}")
        if int(self.max_nonfinite_steps) < 1:
            raise ValueError(f"LoopConfig.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps!r}")
        self.steps, self.warmup_steps = int(self.steps), int(self.warmup_steps)
        self.lr, self.weight_decay = float(self.lr), float(self.weight_decay)
        self.output_dir = Path(self.output_dir)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        """Build from a YAML mapping, naming any key that is not a field."""
        return settings(cls, values, "loop")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["output_dir"] = str(self.output_dir)
        return values


def batch_per_rank(config: LoopConfig, recipe_batch_size: int, world_size: int) -> int:
    """The batch one rank draws: ``config.global_batch_size`` (else the recipe's batch) over ``world_size``
    ranks; sets ``config.global_batch_size`` and logs the plan on rank 0. Raises when it does not divide."""
    from tsfm_training.distributed import per_rank_batch

    config.global_batch_size = int(config.global_batch_size or recipe_batch_size)
    per_rank = per_rank_batch(config.global_batch_size, world_size)
    if _is_main_process():
        log.info("global batch %d = %d ranks x %d; lr %g and %d steps as configured (not scaled with the batch)",
                 config.global_batch_size, world_size, per_rank, config.lr, config.steps)
    return per_rank


def lr_factor(step: int, config: LoopConfig) -> float:
    """Multiplier of ``config.lr`` for optimiser step ``step`` (0-based): warm-up, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    floor = config.min_lr / config.lr
    if config.schedule == "poly":
        return floor + (1.0 - floor) * (1.0 - progress) ** config.poly_power
    if config.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.step_gamma ** ((step - config.warmup_steps) // config.step_every)
    return 1.0


def build_optimizer(parameters: Iterable[nn.Parameter], config: LoopConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum, as nnU-Net/STU-Net), Adam (PyMIC) or AdamW (SuPreM, 3DSAM-adapter)."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a DistributedDataParallel / FSDP / compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _is_main_process() -> bool:
    return _rank() == 0


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def fit(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: LossFn,
    config: LoopConfig,
    parameters: Iterable[nn.Parameter] | None = None,
    validate: Validate | None = None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``config.steps`` optimiser steps, resuming from ``output_dir/last.pt`` if present.

    ``batches`` yields dicts of tensors (e.g. ``image`` (B, C, Z, Y, X) float, ``label`` (B, 1, Z, Y, X));
    they are moved to the model's device. ``parameters`` restricts what is optimised (fine-tuning modes);
    by default every parameter with ``requires_grad``. ``validate(model, step)`` returns scalar metrics,
    logged to TensorBoard and returned; every rank calls it (an FSDP forward needs them all), rank 0 logs.
    ``run_config``, the resolved config of the run, is written as ``config.yaml`` beside ``last.pt``.
    The global generators are seeded with ``seed + rank``: build the network before, from ``seed``. Returns ``step``, ``loss`` (mean of the last ``log_every`` finite
    steps), ``skipped_steps``, ``resumed_from``, ``validation``, ``seconds`` and ``checkpoint``.
    """
    from tsfm_backend.device import amp_dtype as cpu_amp_dtype
    from tsfm_backend.device import resolve_device

    from tsfm_training.distributed import all_ranks_agree, gather_objects
    from tsfm_training.training_state import (
        checkpoint_identity,
        load_checkpoint,
        load_model_and_optimizer,
        model_and_optimizer_state,
        new_checkpoint_id,
        rng_state,
        save_checkpoint,
        save_run_config,
        seed_everything,
        set_rng_state,
    )

    if config.validate_every and validate is None:
        raise ValueError("loop.validate_every is set but this recipe has no validation to run during training; "
                         "remove loop.validate_every")
    device = resolve_device(config.device)
    rank, main = _rank(), _is_main_process()
    if device.type == "cpu" and main:
        log.info("Training on the CPU (%d threads); a CUDA GPU is much faster.", torch.get_num_threads())
    model.to(device)
    network = unwrap(model)
    optimizer = build_optimizer(parameters if parameters is not None else model.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    use_scaler = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    # bf16 on a CPU without native bf16 is emulated, many times slower than float32: train in float32.
    amp_dtype = torch.float16 if device.type == "cuda" else cpu_amp_dtype(device, config.amp)
    use_amp = config.amp and amp_dtype is not None
    if config.amp and not use_amp and main:
        log.info("loop.amp: this CPU does not compute bf16 natively; training in float32")

    checkpoint_path = Path(config.output_dir) / CHECKPOINT_NAME
    start, skipped, validation = 0, 0, {}
    # Same weights on every rank (built from ``seed``), but each rank its own dropout and augmentation.
    seed_everything(config.seed + rank)
    state = load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    _check_ranks_resume_alike(gather_objects((int(state["step"]) if state else 0,
                                              checkpoint_identity(checkpoint_path, state))), checkpoint_path)
    if state is not None:
        load_model_and_optimizer(model, network, optimizer, state)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if hasattr(batches, "load_state_dict") and "batches" in state:
            batches.load_state_dict(state["batches"])
        ranks_rng = state.get("rng_ranks")
        world = len(gather_objects(None))
        if ranks_rng is not None and len(ranks_rng) == world:
            set_rng_state(ranks_rng[rank])
        elif ranks_rng is None and world == 1:
            set_rng_state(state["rng"])
        elif main:
            log.warning("%s was written by %d ranks, this run has %d: random generators reseeded, so the "
                        "resumed run is not bit-identical to an uninterrupted one",
                        checkpoint_path, len(ranks_rng or [None]), world)
        start, skipped, validation = int(state["step"]), int(state["skipped_steps"]), state.get("validation", {})
        if main:
            log.info("Resuming from %s at step %d of %d", checkpoint_path, start, config.steps)
        del state
    if main and run_config is not None:
        save_run_config(run_config, Path(config.output_dir))

    writer = _summary_writer(Path(config.output_dir), start) if main else None
    bar = _progress_bar(start, config) if main else None

    def checkpoint(step: int) -> None:
        # Sharded (FSDP) states are gathered by every rank together; only rank 0 writes.
        model_state, optimizer_state = model_and_optimizer_state(model, network, optimizer)
        ranks_rng = gather_objects(rng_state())
        if not main:
            return
        if writer is not None:
            writer.flush()  # every event up to this step is on disk before the checkpoint that says so
        state = {
            "step": step, "skipped_steps": skipped, "validation": validation,
            "model": model_state, "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": ranks_rng[0], "rng_ranks": ranks_rng, "config": config.to_dict(),
            "checkpoint_id": new_checkpoint_id(step),
        }
        if hasattr(batches, "state_dict"):
            state["batches"] = batches.state_dict()
        save_checkpoint(checkpoint_path, state)

    recent: list[float] = []
    nonfinite_run = 0
    started = time.perf_counter()
    model.train()
    iterator = iter(batches)
    try:
        for step in range(start, config.steps):
            try:
                batch = _to_device(next(iterator), device)
            except StopIteration as exhausted:
                raise ValueError(f"the batch iterator ran out at step {step} of {config.steps}") from exhausted
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                loss = loss_fn(model, batch)
            # Every rank must take (or skip) the same step, or the gradient all-reduce would hang.
            finite = all_ranks_agree(bool(torch.isfinite(loss.detach()).all()), device)
            grad_norm = float("nan")
            if finite:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                clip = config.grad_clip if config.grad_clip is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], clip))
                # The scaler skips fp16 overflow steps itself; without it a non-finite gradient is our job.
                finite = use_scaler or all_ranks_agree(math.isfinite(grad_norm), device)
            if finite:
                scaler.step(optimizer)
                scaler.update()
                nonfinite_run = 0
                recent = (recent + [float(loss.detach())])[-max(1, config.log_every):]
            else:
                optimizer.zero_grad(set_to_none=True)
                nonfinite_run += 1
                skipped += 1
                log.warning("step %d: non-finite loss or gradient (%s); skipped (%d in a row)",
                            step + 1, float(loss.detach()), nonfinite_run)
                if nonfinite_run >= config.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"{nonfinite_run} consecutive non-finite steps up to step {step + 1}; lower the learning "
                        f"rate or check the data (last good checkpoint: {checkpoint_path})")
            with warnings.catch_warnings():
                # A skipped (non-finite) step still advances the schedule; torch warns about that order.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                scheduler.step()
            done = step + 1
            if writer is not None and (done % max(1, config.log_every) == 0 or done == config.steps):
                if recent:
                    writer.add_scalar("train/loss", float(np.mean(recent)), done)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
                writer.add_scalar("train/grad_norm", grad_norm, done)
                writer.add_scalar("train/skipped_steps", skipped, done)
            if validate is not None and (done == config.steps or (
                    config.validate_every and done % config.validate_every == 0)):
                model.eval()
                with torch.no_grad():
                    validation = {k: float(v) for k, v in validate(network, done).items()}
                model.train()
                if writer is not None:
                    for name, value in validation.items():
                        writer.add_scalar(f"val/{name}", value, done)
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
                checkpoint(done)
            if bar is not None:
                bar.update(1)
                if recent:
                    bar.set_postfix(loss=f"{recent[-1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    return {
        "step": config.steps,
        "loss": float(np.mean(recent)) if recent else float("nan"),
        "skipped_steps": skipped,
        "resumed_from": start,
        "validation": validation,
        "seconds": time.perf_counter() - started,
        "checkpoint": str(checkpoint_path),
    }


def _check_ranks_resume_alike(resumes: list[tuple[int, str]], checkpoint_path: Path) -> None:
    """Raise, on every rank alike, unless all ranks resume the same step from the same checkpoint.

    ``resumes``: (step, checkpoint identity) of each rank in rank order, as ``gather_objects`` returns."""
    if len(set(resumes)) <= 1:
        return
    groups: dict[tuple[int, str], list[int]] = {}
    for rank, resume in enumerate(resumes):
        groups.setdefault(resume, []).append(rank)
    described = "; ".join(f"ranks {ranks} at step {step} ({'no checkpoint' if ident == 'none' else ident})"
                          for (step, ident), ranks in groups.items())
    raise ResumeMismatch(
        f"the ranks do not resume alike from {checkpoint_path}: {described}. Every node must see the same "
        "output folder (a shared file system), or copy rank 0's last.pt to each node before restarting")


def _summary_writer(output_dir: Path, start: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events a killed run logged after its last checkpoint, so curves do not fork; the
    # checkpoint's own step was logged before the kill and is not logged again, so it is kept.
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start + 1 if start else None)


def _progress_bar(start: int, config: LoopConfig):
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not config.progress,
                dynamic_ncols=True)
