"""Starting from pretrained weights: load what fits, adapt the stem and head, choose what trains.

Weights come from any checkpoint the backend reads (our folders, nnU-Net v1/v2 STU-Net files, ...), by
name. Every key of the target network is taken from the checkpoint when the shapes agree. Where they do
not:
- **stem** keys (the family's ``STEM_KEYS``) with more input channels are tiled along dim 1 as STU-Net's
  fine-tuning scripts do (``repeat(1, n, 1, 1, 1)``);
- **head** keys (``HEAD_KEYS``, or any output layer with a different class count) are left freshly
  initialised: a new head for a new label set;
- anything else is an error naming the keys, as nnU-Net v2's loader asserts.

Labels: a training set (a Slicer export's ``dataset.json``) names its labels; ``label_remap`` matches those
names to the model card's classes and refuses a set that does not match ("neoplasm" into a "liver"
model) unless the config maps the names explicitly (``data.label_map: {neoplasm: liver}``).

Modes (what ``requires_grad`` stays on): ``full``; ``frozen_encoder`` (the family's ``ENCODER_KEYS``
frozen); ``decoder_only`` (encoder and any ``BOTTLENECK_KEYS`` frozen); ``adapters`` (the family's
``TRAINABLE_PATTERNS`` when it has them, as 3DSAM-adapter; otherwise normalisation parameters and the
head, the equivalent parameter-efficient choice for networks without adapter blocks).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

MODES = ("full", "frozen_encoder", "decoder_only", "adapters")


class FinetuneError(ValueError):
    """Pretrained weights that do not fit the network being fine-tuned."""


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def family_keys(family, name: str) -> tuple[str, ...]:
    """A family's key prefixes ``name`` (``HEAD_KEYS``...); a per-backbone mapping contributes all its values."""
    keys = getattr(family, name, ())
    if isinstance(keys, dict):
        return tuple(prefix for values in keys.values() for prefix in values)
    return tuple(keys)


def transfer_weights(network: nn.Module, state_dict: dict[str, torch.Tensor], family,
                     strict: bool = True) -> dict[str, list[str]]:
    """Copy ``state_dict`` into ``network`` as described in the module docstring.

    Returns ``{"loaded": [...], "tiled": [...], "new_head": [...], "missing": [...]}`` (key names).
    """
    stem, head = family_keys(family, "STEM_KEYS"), family_keys(family, "HEAD_KEYS")
    target = network.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "tiled": [], "new_head": [], "missing": []}
    updated: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for name, tensor in target.items():
        source = state_dict.get(name)
        if source is None:
            (report["new_head"] if _matches(name, head) else report["missing"]).append(name)
            continue
        if tuple(source.shape) == tuple(tensor.shape):
            updated[name] = source.to(tensor.dtype)
            report["loaded"].append(name)
        elif _matches(name, stem) and source.ndim == tensor.ndim >= 2 and source.shape[0] == tensor.shape[0] \
                and tensor.shape[1] % source.shape[1] == 0 and source.shape[2:] == tensor.shape[2:]:
            updated[name] = source.repeat(1, tensor.shape[1] // source.shape[1], *([1] * (source.ndim - 2)))
            report["tiled"].append(name)
        elif _matches(name, head) or (source.ndim == tensor.ndim and source.shape[1:] == tensor.shape[1:]
                                      and name.endswith(("weight", "bias")) and not head):
            report["new_head"].append(name)
        else:
            wrong.append(f"{name} {tuple(source.shape)} -> {tuple(tensor.shape)}")
    missing = [m for m in report["missing"] if not m.endswith("num_batches_tracked")]
    if wrong or (strict and missing):
        parts = [f"shape mismatch: {', '.join(wrong[:5])}" if wrong else "",
                 f"not in the checkpoint: {', '.join(missing[:5])}" if strict and missing else ""]
        raise FinetuneError("pretrained weights do not fit: " + "; ".join(p for p in parts if p))
    network.load_state_dict(updated, strict=False)
    return report


def load_pretrained(network: nn.Module, source: str, family, strict: bool = True) -> dict[str, Any]:
    """Read ``source`` (a model id, our model folder or an official checkpoint) and transfer its weights."""
    from tsfm_backend.checkpoints import read_checkpoint
    from tsfm_backend.store import resolve_model

    state_dict, card, fmt = read_checkpoint(resolve_model(source))
    report = transfer_weights(network, state_dict, family, strict=strict)
    return {"source": str(source), "format": fmt, "source_model": card.id, **{k: len(v) for k, v in report.items()}}


def _label_key(name: str) -> str:
    """Names compare without case, spaces, hyphens or underscores ("Kidney tumor" == "kidney_tumor")."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def label_remap(dataset: str, dataset_classes: dict[int, str], model_classes: dict[int, str],
                label_map: dict[str, str] | None = None) -> dict[int, int]:
    """Dataset label value -> model class id, matched by name; ``label_map`` renames dataset labels first
    (``{neoplasm: liver}``; a label mapped to ``background`` is trained as background).

    Raises ``FinetuneError`` listing both name sets when a dataset label matches no model class, or when a
    ``label_map`` entry names a label the dataset does not have or a class the model does not have.
    """
    renames = {_label_key(k): str(v) for k, v in (label_map or {}).items()}
    model = {_label_key(name): value for value, name in model_classes.items()}
    unused = sorted(k for k in (label_map or {}) if _label_key(k) not in
                    {_label_key(n) for n in dataset_classes.values()})
    if unused:
        raise FinetuneError(f"data.label_map names {unused}, which dataset {dataset!r} does not have; its labels: "
                            f"{sorted(dataset_classes.values())}")
    remap: dict[int, int] = {}
    unmatched: list[str] = []
    for value, name in sorted(dataset_classes.items()):
        target = renames.get(_label_key(name), name)
        if _label_key(target) == "background":
            remap[int(value)] = 0
        elif _label_key(target) in model:
            remap[int(value)] = int(model[_label_key(target)])
        else:
            unmatched.append(name if target == name else f"{name} -> {target}")
    if unmatched:
        raise FinetuneError(
            f"dataset {dataset!r} labels {unmatched} match no class of the model. Dataset labels: "
            f"{sorted(dataset_classes.values())}; model classes: {sorted(model_classes.values())}. Rename them "
            "in data.label_map (e.g. {neoplasm: liver}, or {name: background} to ignore one), or give the model "
            "the dataset's classes")
    return remap


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)


def trainable_names(network: nn.Module, family, mode: str) -> set[str]:
    """Parameter names that train in ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"fine-tuning mode {mode!r} is not one of {MODES}")
    names = {name for name, _ in network.named_parameters()}
    encoder = family_keys(family, "ENCODER_KEYS")
    if mode == "full":
        return names
    if mode in ("frozen_encoder", "decoder_only") and not encoder:
        raise ValueError(f"family {family.__name__} declares no ENCODER_KEYS; use mode 'full' or 'adapters'")
    if mode == "frozen_encoder":
        return {n for n in names if not _matches(n, encoder)}
    if mode == "decoder_only":
        frozen = encoder + family_keys(family, "BOTTLENECK_KEYS")
        return {n for n in names if not _matches(n, frozen)}
    patterns = getattr(family, "TRAINABLE_PATTERNS", None)
    if patterns:
        return {n for n in names if any(fnmatchcase(n, p) for p in patterns)}
    head = family_keys(family, "HEAD_KEYS")
    norms = {f"{m}.{p}" if m else p for m, module in network.named_modules() if _is_norm(module)
             for p, _ in module.named_parameters(recurse=False)}
    return {n for n in names if n in norms or _matches(n, head)}


def apply_mode(network: nn.Module, family, mode: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``mode`` and return the trainable parameters (for ``fit(parameters=...)``)."""
    keep = trainable_names(network, family, mode)
    trainable = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name in keep)
        if name in keep:
            trainable.append(parameter)
    if not trainable:
        raise ValueError(f"fine-tuning mode {mode!r} leaves no trainable parameter in this network")
    return trainable
