"""Multi-process training under ``torchrun``: one process per GPU (or CPU slot), on one or many nodes.

``torchrun --nnodes N --nproc_per_node G -m tsfm_training.cli run CONFIG.yaml`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; ``setup`` joins the process group (NCCL on CUDA,
gloo on the CPU) and ``wrap`` returns the network ready for ``loop.fit``:

- ``ddp``: DistributedDataParallel; gradients are averaged, so every rank keeps identical weights.
- ``fsdp``: parameters, gradients and optimiser state sharded over the ranks (``fully_shard``), for the
  1B+ presets (STU-Net H, TSFM) that do not fit one GPU with their optimiser state.
- ``activation_checkpointing``: recompute each stage (every element of the network's top-level
  ``ModuleList``s) in the backward pass instead of storing its activations; weight names are unchanged.

Each rank draws its own batches (``PatchBatches(stream=rank)``) and seeds its global generators with
``seed + rank`` (dropout, augmentation), after every rank built the network from the same ``seed``; only
rank 0 writes checkpoints, logs, exports and evaluates (``loop.fit`` checks the rank itself). The
recipe's batch is global: ``per_rank_batch`` splits it over the ranks, so adding GPUs does not change
what is trained; batch Dice statistics are summed over the ranks (``sum_over_ranks``) as nnU-Net does.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

STRATEGIES = ("none", "ddp", "fsdp")


class DistributedSetupError(ValueError):
    """A distributed run that would train something other than what its config says; the message says why."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "auto"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if rank == 0:
        log.info("distributed training: %d processes (%s)", world_size, "nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def enable_activation_checkpointing(network: nn.Module) -> int:
    """Recompute every stage of ``network`` in the backward pass; returns how many modules were wrapped.

    A stage is an element of one of the network's top-level ``nn.ModuleList``s (encoder and decoder stages
    in STU-Net, TSFM and PCT-Net). The module's ``forward`` is wrapped in place, so state_dict names stay.
    """
    wrapped = 0
    for child in network.children():
        if isinstance(child, nn.ModuleList):
            for stage in child:
                if any(p.requires_grad for p in stage.parameters()):
                    stage.forward = functools.partial(_checkpointed, stage.forward)
                    wrapped += 1
    return wrapped


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def wrap(network: nn.Module, info: DistInfo, strategy: str = "ddp", activation_checkpointing: bool = False,
         find_unused_parameters: bool = True) -> nn.Module:
    """The network on this rank's device, wrapped for ``strategy`` (a no-op for one process).

    ``find_unused_parameters``: DDP must be told when some parameters get no gradient in a step: the
    zero-weighted lowest deep-supervision head, PCT-Net's branches for other resolution modes. Turn it
    off for networks that use every parameter in every step (a little faster).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy {strategy!r} is not one of {STRATEGIES}")
    if info.enabled and strategy == "none":
        raise DistributedSetupError(
            f"distributed.strategy is 'none' but torchrun started {info.world_size} processes: each would train "
            "its own model on its own batches and rank 0's would be kept. Set distributed.strategy to ddp or "
            "fsdp, or run without torchrun")
    if activation_checkpointing:
        log.info("activation checkpointing on %d stages", enable_activation_checkpointing(network))
    if not info.enabled or strategy == "none":
        return network
    device = torch.device(info.device)
    network.to(device)
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)
    refuse_fsdp(network)
    from torch.distributed.fsdp import fully_shard

    # Shard each stage separately, then the rest, so only one stage's full parameters exist at a time.
    for child in network.children():
        if isinstance(child, nn.ModuleList):
            for stage in child:
                fully_shard(stage)
    return fully_shard(network)


# Networks FSDP cannot shard stage by stage, and why (keyed by class name: the backend's families).
FSDP_UNSUITABLE = {
    "PCTNet": "its prediction heads are run piece by piece (their sub-modules are called, never the head "
              "itself), so FSDP would not gather a head's parameters before they are used",
}


def refuse_fsdp(network: nn.Module) -> None:
    """Raise, naming the reason, when ``network`` cannot be sharded with ``fully_shard``."""
    reason = FSDP_UNSUITABLE.get(type(network).__name__)
    scalars = [name for name, parameter in network.named_parameters() if parameter.ndim == 0]
    if scalars:
        reason = (f"it has 0-dimensional parameters ({', '.join(scalars[:3])}{', ...' if len(scalars) > 3 else ''}), "
                  "which FSDP cannot shard, and their names are the checkpoint's public layout")
    if reason:
        raise DistributedSetupError(f"distributed.strategy fsdp does not work for {type(network).__name__}: {reason}. "
                                    "Use distributed.strategy ddp (this network fits one GPU)")


def torchrun_world_size() -> int:
    """How many processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_torchrun(recipe: str, why: str) -> None:
    """Stop a recipe that cannot train across processes before it does anything under torchrun."""
    if torchrun_world_size() > 1:
        raise DistributedSetupError(f"recipe {recipe!r} does not support torchrun ({torchrun_world_size()} "
                                    f"processes): {why}. Run it as a single process")


def per_rank_batch(global_batch_size: int, world_size: int) -> int:
    """The batch each rank draws so that the ranks together draw ``global_batch_size`` samples per step."""
    if global_batch_size < 1:
        raise DistributedSetupError(f"the global batch size must be >= 1, got {global_batch_size}")
    if global_batch_size % world_size:
        raise DistributedSetupError(
            f"global batch {global_batch_size} does not divide over {world_size} ranks; set "
            f"loop.global_batch_size to a multiple of {world_size} (and scale loop.lr yourself if you change it)")
    return global_batch_size // world_size


def sum_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor summed over all ranks, with gradients flowing back to every rank's own share.

    For batch statistics (Dice's tp/fp/fn): every rank then computes the loss of the global batch, and
    the gradient average DDP/FSDP take over the ranks equals one process's gradient on the whole batch.
    Outside a process group the tensors come back unchanged.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_world_size() == 1:
        return tensors
    return tuple(_SumOverRanks.apply(tensor) for tensor in tensors)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient, with plain ``torch.distributed`` calls:
    ``torch.distributed.nn.functional.all_reduce`` (deprecated) left a thread that aborted gloo ranks at
    exit ("terminate called without an active exception") after their work was done."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        summed = tensor.clone()
        torch.distributed.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        summed = grad.clone()
        torch.distributed.all_reduce(summed)
        return summed


def gather_objects(value):
    """``value`` of every rank, in rank order (a list of one outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def is_sharded(network: nn.Module) -> bool:
    """Whether the network's parameters are FSDP shards (its full state must be gathered collectively)."""
    return any(type(p).__name__ == "DTensor" for p in network.parameters())


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is True on every rank (so all ranks skip, or take, the same step)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() > 0)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
