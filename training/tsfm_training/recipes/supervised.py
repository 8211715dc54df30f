"""Supervised training and fine-tuning of an automatic model: STU-Net/nnU-Net style, SuPreM, or a TSFM pool.

Config sections:
- ``output_dir``: where ``train/`` (checkpoint, TensorBoard), ``model/`` (exported) and ``evaluation/`` go.
- ``threads``: torch CPU threads (optional).
- ``model``: the model card of the result (family, architecture, classes, spacing, normalization,
  patch_size, output...). Its preprocessing is the backend's, so training sees what inference will.
- ``data``: ``datasets`` (entries for ``dataset_from_config``), ``validation`` (case ids held out and
  scored at the end), ``pool`` (``classes``/``remap`` merging several datasets), ``store`` (the
  preprocessed store, ``data/store.py``; ``cache`` is read as its old name), ``preprocess_workers``,
  ``workers`` / ``prefetch`` (DataLoader processes, and batches each builds ahead), ``class_first``
  (foreground patches pick their class first, as nnU-Net; ``false``: any foreground voxel), ``batch_size``
  (the published global batch; ``loop.global_batch_size`` overrides it), ``foreground_ratio``,
  ``augmentation``, ``patch_size`` (default: the card's), ``max_cases`` (per dataset), ``label_map``
  (dataset label name -> model class name, for datasets whose names differ from the card's; without a
  ``pool``, labels are matched to the card's classes by name), ``validation_batches`` (patches per
  validation during training, 10).
- ``init`` (optional): ``checkpoint`` (id, folder or official file), ``mode`` (finetune.MODES), ``strict``,
  ``new_head`` (re-initialise the head even when its shape fits, as STU-Net's fine-tuning does).
- ``objective``: ``name`` ``dice_ce`` (softmax, deep supervision), ``partial_label`` (sigmoid, pool,
  MultiTalent/TSFM) or ``suprem`` (sigmoid, SuPreM's per-class BCE + Dice), plus the loss's settings.
- ``loop``: ``LoopConfig`` fields (``output_dir`` is set from the top level). With ``validate_every`` the
  held-out cases are scored every that many steps on fixed patches (Dice of the thresholded prediction
  per class, averaged: nnU-Net's online "pseudo Dice"), logged as ``val/pseudo_dice``.
- ``evaluate``: ``tolerance_mm``, ``step`` (sliding-window overlap), or ``false`` to skip.
- ``distributed`` (under torchrun): ``strategy`` ddp | fsdp | none, ``activation_checkpointing``,
  ``find_unused_parameters``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tsfm_training.config import ConfigError, section

log = logging.getLogger(__name__)


def seeded_network(card, seed: int, deep_supervision: bool = False):
    """The card's training network with weights drawn from ``seed`` (every rank builds the same one)."""
    from tsfm_training.networks import training_network
    from tsfm_training.training_state import seed_everything

    seed_everything(seed)
    return training_network(card, deep_supervision=deep_supervision)


def checked_remap(datasets, card, data: dict[str, Any]) -> dict[str, dict[int, int]] | None:
    """Without a ``data.pool``, each dataset's label values -> the card's class ids, matched by name
    (``data.label_map`` renames); raises ``FinetuneError`` listing both name sets when a name has no match."""
    from tsfm_training.finetune import label_remap

    if data.get("pool"):
        return (data["pool"] or {}).get("remap")
    return {d.name: label_remap(d.name, d.classes, card.classes, data.get("label_map")) for d in datasets}


def prepare_training_data(config: dict[str, Any], card, output_dir: Path, partial: bool = False,
                          stream: int = 0, batch_size: int | None = None):
    """(PatchLoader over the training cases, validation cases, pool) from the ``data`` section.

    The cases are preprocessed once into the store (``data.store``, else ``data.cache``, else
    ``output_dir/store``; rank 0 writes, ``data.preprocess_workers`` processes) and read by
    ``data.workers`` DataLoader processes (``auto``: the CPUs of this rank's share of the machine, at most
    8) that build ``data.prefetch`` batches each ahead of the step.
    """
    from tsfm_training.data.datasets import dataset_from_config
    from tsfm_training.data.loader import CaseRef, PatchLoader, PatchSettings, SegmentationSample, StepBatches
    from tsfm_training.data.pool import DatasetPool
    from tsfm_training.data.preprocess import Preprocessing
    from tsfm_training.data.store import ensure_store

    data = section(config, "data")
    entries = data.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("config 'data.datasets' must list at least one dataset")
    datasets = [dataset_from_config(entry) for entry in entries]
    pool_settings = data.get("pool") or {}
    classes = pool_settings.get("classes", card.classes)
    pool = DatasetPool(datasets, classes, checked_remap(datasets, card, data))
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
    with_masks = any(pool.entries[i].case.masks for i in train_index)
    if with_masks and card.output != "sigmoid":
        raise ConfigError("per-class mask datasets (format: masks) may overlap and need a sigmoid model "
                          "(model.output: sigmoid) with objective partial_label or suprem")

    folder = Path(data.get("store") or data.get("cache") or output_dir / "store")
    paths = ensure_store([pool.entries[i].case for i in train_index], Preprocessing.from_card(card), folder,
                         rank=stream, workers=int(data.get("preprocess_workers", 0)))
    refs = [CaseRef(path, pool.mask_lookup(i) if pool.entries[i].case.masks else pool.entries[i].lookup,
                    pool.annotated_vector(i) if partial else None)
            for i, path in zip(train_index, paths, strict=True)]
    settings = PatchSettings(tuple(data.get("patch_size", card.patch_size)), float(data.get("foreground_ratio", 0.33)),
                             pool.num_classes, with_masks, data.get("augmentation"),
                             bool(data.get("class_first", True)))
    steps = StepBatches(refs, SegmentationSample(settings), int(batch_size or data.get("batch_size", 2)),
                        int(section(config, "loop").get("seed", 0)), pool.sampling_weights()[train_index], stream)
    batches = PatchLoader(steps, loader_workers(data.get("workers", "auto")), int(data.get("prefetch", 2)),
                          pin_memory=_cuda_training(config))
    log.info("training on %d cases (store %s, %d loader workers), %d held out for validation", len(refs), folder,
             batches.workers, len(validation))
    return batches, validation, pool


def loader_workers(setting: int | str) -> int:
    """``data.workers``: a number, or ``auto``: this process's share of the CPUs minus one, at most 8."""
    import os

    if setting != "auto":
        return int(setting)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, available // local_ranks - 1))


def _cuda_training(config: dict[str, Any]) -> bool:
    import torch

    return torch.cuda.is_available() and section(config, "loop").get("device", "auto") in ("auto", "cuda")


def build_loss(objective: dict[str, Any], card):
    """``loss_fn(model, batch)`` for the objective's ``name``."""
    from tsfm_training.objectives.partial_label import PartialLabelLoss, partial_label_loss_fn
    from tsfm_training.objectives.supervised import build_supervised_loss, supervised_loss_fn
    from tsfm_training.objectives.suprem import SupremLoss, suprem_loss_fn

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
    if name == "suprem":
        if card.output != "sigmoid":
            raise ConfigError("objective suprem needs a sigmoid model (model.output: sigmoid)")
        ds_weights = settings.pop("ds_weights", None)
        return suprem_loss_fn(SupremLoss(**settings), ds_weights)
    raise ConfigError(f"objective name {name!r} is not one of dice_ce, partial_label, suprem")


def initialise(network, card, init: dict[str, Any]):
    """Load pretrained weights and set ``requires_grad`` by the mode; returns (trainable parameters, report)."""
    from tsfm_training.finetune import apply_mode, load_pretrained
    from tsfm_training.networks import family_of

    family = family_of(card)
    report: dict[str, Any] = {"mode": init.get("mode", "full")}
    if init.get("checkpoint"):
        report.update(load_pretrained(network, str(init["checkpoint"]), family, bool(init.get("strict", True))))
        if init.get("new_head"):
            report["reinitialised_head"] = reinitialise_head(network, card)
        log.info("initialised from %s: %s", init["checkpoint"], report)
    return apply_mode(network, family, report["mode"]), report


def reinitialise_head(network, card) -> int:
    """Give ``network`` the freshly initialised head of a new network of the same card; returns the key count.

    STU-Net's fine-tuning never loads ``seg_outputs`` from the pretrained file, even when the class count
    matches: the downstream classes are new classes.
    """
    from tsfm_training.finetune import family_keys
    from tsfm_training.networks import family_of, training_network

    head = family_keys(family_of(card), "HEAD_KEYS")
    fresh = {k: v for k, v in training_network(card).state_dict().items() if k.startswith(head)}
    if not fresh:
        raise ConfigError(f"init.new_head: family {card.family!r} declares no head keys")
    network.load_state_dict(fresh, strict=False)
    return len(fresh)


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
    from tsfm_training.loop import LoopConfig, batch_per_rank, fit
    from tsfm_training.networks import card_from_config

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    output_dir = Path(config.get("output_dir", "out/training/supervised"))
    card = card_from_config(section(config, "model"))
    objective = section(config, "objective", required=False)
    partial = objective.get("name") in ("partial_label", "suprem")
    loop = LoopConfig.from_dict({**section(config, "loop"), "output_dir": output_dir / "train"})
    parallel = section(config, "distributed", required=False)
    info = distributed.setup(loop.device)
    loop.device = info.device
    per_rank = batch_per_rank(loop, int(section(config, "data").get("batch_size", 2)), info.world_size)
    batches, validation, pool = prepare_training_data(config, card, output_dir, partial, stream=info.rank,
                                                      batch_size=per_rank)
    validate = None
    if loop.validate_every:
        from tsfm_training.recipes.validation import held_out_validation

        validate = held_out_validation(validation, pool, card, section(config, "data"), loop.seed, per_rank)
    network = seeded_network(card, loop.seed, deep_supervision=bool(objective.get("deep_supervision", True)))
    _, init_report = initialise(network, card, section(config, "init", required=False))
    network = distributed.wrap(network, info, parallel.get("strategy", "ddp"),
                               bool(parallel.get("activation_checkpointing", False)),
                               bool(parallel.get("find_unused_parameters", True)))
    # fit optimises what requires_grad after the fine-tuning mode (FSDP replaces the parameter objects).
    result = fit(network, batches, build_loss(objective, card), loop, validate=validate, run_config=config)
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
