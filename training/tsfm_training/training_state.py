"""What a training checkpoint holds besides the step: model, optimiser, and every random generator.

Kept apart from the loop so the loop reads as the step it takes. Everything here is stored in types
``torch.load(weights_only=True)`` accepts, written atomically, and, for FSDP-sharded networks, gathered
into one full state by every rank together (rank 0 writes it).
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def rng_state() -> dict[str, Any]:
    """Every global random generator, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples; a checkpoint round trip may hand back lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename) so a kill mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"cannot read training checkpoint {path}: {error}") from error


def parameter_names(network: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of the optimiser's parameters, per param group, in the optimiser's order."""
    names = {id(parameter): name for name, parameter in network.named_parameters()}
    try:
        return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    except KeyError as error:
        raise ValueError("the optimiser holds a parameter that is not in the network") from error


def named_optimizer_state(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """An optimiser state keyed by parameter name, as FSDP's full state is (``state`` holds only the
    parameters that took a step: one that never had a gradient has none). Name-keyed states pass as they are."""
    if all(isinstance(k, str) for k in state["state"]) and all(
            isinstance(p, str) for g in state["param_groups"] for p in g["params"]):
        return state
    flat = [name for group in names for name in group]
    ids = [p for group in state["param_groups"] for p in group["params"]]
    if len(ids) != len(flat) or len(state["param_groups"]) != len(names):
        raise ValueError(f"the checkpoint's optimiser state covers {len(ids)} parameters in "
                         f"{len(state['param_groups'])} groups, this run optimises {len(flat)} in {len(names)}; "
                         "resume with the same model and fine-tuning mode")
    by_id = dict(zip(ids, flat, strict=True))
    return {"state": {by_id[k]: v for k, v in state["state"].items()},
            "param_groups": [{**group, "params": [by_id[p] for p in group["params"]]}
                             for group in state["param_groups"]]}


def _indexed_optimizer_state(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """The inverse of ``named_optimizer_state`` for this run's optimiser (what ``Optimizer.load_state_dict`` takes)."""
    index = {name: i for i, name in enumerate(n for group in names for n in group)}
    unknown = sorted(set(state["state"]) - set(index))
    if unknown:
        raise ValueError(f"the checkpoint has optimiser state for parameters this run does not train: {unknown[:5]}")
    return {"state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**group, "params": [index[p] for p in group["params"]]}
                             for group in state["param_groups"]]}


def model_and_optimizer_state(model: nn.Module, network: nn.Module,
                               optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and name-keyed optimiser states; for FSDP a collective call on every rank.

    Both layouts write the same checkpoint, so a run may resume with or without FSDP."""
    from tsfm_training.distributed import is_sharded

    if not is_sharded(network):
        return network.state_dict(), named_optimizer_state(optimizer.state_dict(),
                                                           parameter_names(network, optimizer))
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_model_and_optimizer(model: nn.Module, network: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load a checkpoint written by ``model_and_optimizer_state`` (any layout, or an older index-keyed one)."""
    from tsfm_training.distributed import is_sharded

    names = parameter_names(network, optimizer)
    optimizer_state = named_optimizer_state(state["optimizer"], names)
    if not is_sharded(network):
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(_indexed_optimizer_state(optimizer_state, names))
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True))
    # A parameter that never had a gradient (a zero-weighted deep-supervision head) has no saved state;
    # torch first gives every parameter a zero state, which is dropped again so the resumed optimiser
    # holds what the uninterrupted one would.
    set_optimizer_state_dict(model, optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
    stateless = {n for group in names for n in group} - set(optimizer_state["state"])
    by_name = dict(network.named_parameters())
    for name in stateless:
        optimizer.state.pop(by_name[name], None)


def checkpoint_identity(path: Path, state: dict[str, Any] | None) -> str:
    """What names one checkpoint across nodes: the id written with it, else a hash of the file."""
    if state is None:
        return "none"
    if "checkpoint_id" in state:
        return str(state["checkpoint_id"])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def new_checkpoint_id(step: int) -> str:
    return f"step{step}-{uuid.uuid4().hex[:12]}"


def save_run_config(config: dict[str, Any], directory: Path) -> Path:
    """The resolved run config as YAML next to the checkpoints, so an output folder says how it was made."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    os.replace(tmp, path)
    return path


def _plain(value: Any) -> Any:
    """Config values YAML can write: paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {str(k) if isinstance(k, Path) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
