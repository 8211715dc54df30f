"""Supervised training and fine-tuning of an automatic model: STU-Net/nnU-Net style, SuPreM, or a TSFM pool.

Config sections:
- ``output_dir``: where ``train/`` (checkpoint, TensorBoard), ``model/`` (exported) and ``evaluation/`` go.
- ``threads``: torch CPU threads (optional).
- ``model``: the model card of the result (family, architecture, classes, spacing, normalization,
  patch_size, output...). Its preprocessing is the backend's, so training sees what inference will.
- ``data``: ``datasets`` (entries for ``dataset_from_config``), ``validation`` (case ids held out and
  scored at the end), ``pool`` (``classes``/``remap`` merging several datasets), ``cache``, ``batch_size``,
  ``foreground_ratio``, ``augmentation``, ``patch_size`` (default: the card's), ``max_cases`` (per dataset).
- ``init`` (optional): ``checkpoint`` (id, folder or official file), ``mode`` (finetune.MODES), ``strict``.
- ``objective``: ``name`` ``dice_ce`` (softmax, deep supervision) or ``partial_label`` (sigmoid, pool),
  plus the loss's settings.
- ``loop``: ``LoopConfig`` fields (``output_dir`` is set from the top level).
- ``evaluate``: ``tolerance_mm``, ``step`` (sliding-window overlap), or ``false`` to skip.
- ``distributed`` (under torchrun): ``strategy`` ddp | fsdp | none, ``activation_checkpointing``,
  ``find_unused_parameters``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_training.config import ConfigError, section

log = logging.getLogger(__name__)


def prepare_training_data(config: dict[str, Any], card, output_dir: Path, partial: bool = False,
                          stream: int = 0):
    """(PatchBatches over the training cases, validation cases, pool) from the ``data`` section."""
    from tsfm_training.data.datasets import dataset_from_config
    from tsfm_training.data.pool import DatasetPool
    from tsfm_training.data.preprocess import CaseCache, Preprocessing
    from tsfm_training.data.sampler import PatchBatches, patch_sample_fn
    from tsfm_training.data.transforms import training_transforms

    data = section(config, "data")
    entries = data.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("config 'data.datasets' must list at least one dataset")
    datasets = [dataset_from_config(entry) for entry in entries]
    pool_settings = data.get("pool") or {}
    classes = pool_settings.get("classes", card.classes)
    pool = DatasetPool(datasets, classes, pool_settings.get("remap"))
    if partial and pool.num_classes != len(card.classes):
        raise ConfigError(f"the pool has {pool.num_classes} classes but the model card {len(card.classes)}")

    held_out = set(data.get("validation", []))
    known = {e.case.case_id for e in pool.entries}
    if held_out - known:
        raise ConfigError(f"data.validation names unknown cases {sorted(held_out - known)}")
    train_index = [i for i, e in enumerate(pool.entries) if e.case.case_id not in held_out]
    if data.get("max_cases"):
        # At most this many training cases from each dataset (quick runs that still see every dataset).
        taken: dict[str, int] = {}
        limited = []
        for i in train_index:
            name = pool.entries[i].case.dataset
            if taken.get(name, 0) < int(data["max_cases"]):
                taken[name] = taken.get(name, 0) + 1
                limited.append(i)
        train_index = limited
    validation = [e.case for e in pool.entries if e.case.case_id in held_out]

    cache = CaseCache(data.get("cache", output_dir / "cache"))
    settings = Preprocessing.from_card(card)
    prepared = []
    for i in train_index:
        case = cache.get(pool.entries[i].case, settings)
        labels = pool.remap_labels(i, case.label)
        case.label = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.uint16)
        prepared.append(case)
    weights = pool.sampling_weights()[train_index]
    transforms = training_transforms(data.get("patch_size", card.patch_size), float(data.get("foreground_ratio", 0.33)),
                                     data.get("augmentation"))
    annotated = [pool.annotated_vector(i) for i in train_index] if partial else None
    batches = PatchBatches(prepared, patch_sample_fn(transforms), int(data.get("batch_size", 2)),
                           int(section(config, "loop").get("seed", 0)), weights, annotated, stream)
    log.info("training on %d cases, %d held out for validation", len(prepared), len(validation))
    return batches, validation, pool


def build_loss(objective: dict[str, Any], card):
    """``loss_fn(model, batch)`` for the objective's ``name``."""
    from tsfm_training.objectives.partial_label import PartialLabelLoss, partial_label_loss_fn
    from tsfm_training.objectives.supervised import build_supervised_loss, supervised_loss_fn

    settings = {k: v for k, v in objective.items() if k not in ("name", "deep_supervision")}
    name = objective.get("name", "dice_ce")
    if name == "dice_ce":
        if card.output != "softmax":
            raise ConfigError("objective dice_ce needs a softmax model (model.output: softmax)")
        return supervised_loss_fn(build_supervised_loss(settings))
    if name == "partial_label":
        if card.output != "sigmoid":
            raise ConfigError("objective partial_label needs a sigmoid model (model.output: sigmoid)")
        ds_weights = settings.pop("ds_weights", None)
        return partial_label_loss_fn(PartialLabelLoss(**settings), ds_weights)
    raise ConfigError(f"objective name {name!r} is not one of dice_ce, partial_label")


def initialise(network, card, init: dict[str, Any]):
    """Load pretrained weights and set ``requires_grad`` by the mode; returns (trainable parameters, report)."""
    from tsfm_training.finetune import apply_mode, load_pretrained
    from tsfm_training.networks import family_of

    family = family_of(card)
    report: dict[str, Any] = {"mode": init.get("mode", "full")}
    if init.get("checkpoint"):
        report.update(load_pretrained(network, str(init["checkpoint"]), family, bool(init.get("strict", True))))
        log.info("initialised from %s: %s", init["checkpoint"], report)
    return apply_mode(network, family, report["mode"]), report


def finish(network, card, output_dir: Path, validation, config: dict[str, Any], provenance: dict[str, Any]):
    """Export the trained network and, when cases were held out, score it on them with the backend."""
    import dataclasses

    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.inference.segmenter import SegmentOptions

    from tsfm_training.evaluate import evaluate_model
    from tsfm_training.export import export_model

    card = dataclasses.replace(card, provenance={**card.provenance, **provenance})
    model_dir = export_model(network, card, output_dir / "model")
    evaluation = config.get("evaluate", {})
    if evaluation is False or not validation:
        return model_dir, None
    loaded = load_model(model_dir)
    options = SegmentOptions(step=float(evaluation.get("step", 0.5)), amp=False)
    summary = evaluate_model(loaded, validation, output_dir / "evaluation",
                             float(evaluation.get("tolerance_mm", 2.0)), options)
    log.info("validation: mean Dice %.4f, NSD %.4f over %d cases", summary["mean_dice"], summary["mean_nsd"],
             summary["cases"])
    return model_dir, summary


def run(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tsfm_training import distributed
    from tsfm_training.loop import LoopConfig, fit
    from tsfm_training.networks import card_from_config, training_network

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    output_dir = Path(config.get("output_dir", "out/training/supervised"))
    card = card_from_config(section(config, "model"))
    objective = section(config, "objective", required=False)
    partial = objective.get("name") == "partial_label"
    loop = LoopConfig.from_dict({**section(config, "loop"), "output_dir": output_dir / "train"})
    parallel = section(config, "distributed", required=False)
    info = distributed.setup(loop.device)
    loop.device = info.device
    batches, validation, _ = prepare_training_data(config, card, output_dir, partial, stream=info.rank)
    network = training_network(card, deep_supervision=bool(objective.get("deep_supervision", True)))
    _, init_report = initialise(network, card, section(config, "init", required=False))
    network = distributed.wrap(network, info, parallel.get("strategy", "ddp"),
                               bool(parallel.get("activation_checkpointing", False)),
                               bool(parallel.get("find_unused_parameters", True)))
    # fit optimises what requires_grad after the fine-tuning mode (FSDP replaces the parameter objects).
    result = fit(network, batches, build_loss(objective, card), loop)
    if not info.is_main:
        distributed.cleanup()
        return {"rank": info.rank, "train": result}
    provenance = {"recipe": "supervised", "steps": loop.steps, "init": init_report,
                  "training_cases": len(batches.cases), "validation_cases": [c.case_id for c in validation]}
    trained = trained_network(card, Path(result["checkpoint"]))
    model_dir, summary = finish(trained, card, output_dir, validation, config, provenance)
    distributed.cleanup()
    return {"output_dir": str(output_dir), "model": str(model_dir), "train": result, "init": init_report,
            "evaluation": summary}


def trained_network(card, checkpoint: Path):
    """The card's network with the final weights of ``checkpoint`` (``last.pt``; full, unsharded state)."""
    from tsfm_training.export import state_dict_from_file
    from tsfm_training.networks import training_network

    network = training_network(card)
    network.load_state_dict(state_dict_from_file(checkpoint))
    return network.eval()
