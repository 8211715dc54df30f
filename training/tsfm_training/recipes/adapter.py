"""Parameter-efficient fine-tuning of the promptable 3DSAM-adapter model on one tumour type.

As the authors train it: cubic crops (S^3, 128 for the released model) around the tumour, the grey image
repeated to 3 channels, and per crop 10 clicks on random tumour voxels plus 20 on random voxels anywhere
in the crop; loss DiceCE (softmax, background excluded, 0.5 / 0.5); AdamW lr 4e-4, no weight decay, the
rate falling linearly to 1 % (poly, power 1, ``min_lr``), gradient clip 1.0. Only the adapter, norm,
depth-embedding, prompt-encoder and decoder parameters train (``finetune`` mode ``adapters``, the
family's ``TRAINABLE_PATTERNS``).

The target is one tumour type: ``data.target_labels`` lists the label values that form it (KiTS: ``[2]``,
the tumour, as the authors train; LiTS ``[2]``, MSD Colon ``[1]``); without it every non-zero label is
the target. ``data.augmentation`` ``3dsam_adapter`` applies the authors' training transforms
(``adapter_transforms``; ``3dsam_adapter_2d`` their "dummy 2D" variant for Pancreas and Colon); ``none``
(the default) crops 128^3 around the object without augmenting.

Config sections as in the supervised recipe (``model`` is a promptable card of family ``sam3d``) plus
``prompts``: ``positive`` (10) and ``random`` (20). Starting weights: ``init.checkpoint`` (a 3DSAM-adapter
model), or ``init.sam_checkpoint`` (Segment Anything's 2D ``sam_vit_b_01ec64.pth``, as the paper starts:
its image encoder is copied, everything the adapter mode trains starts fresh from ``loop.seed``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_training.config import ConfigError, section

log = logging.getLogger(__name__)


AUGMENTATIONS = ("none", "3dsam_adapter", "3dsam_adapter_2d")
SHIFT_HU = 20.0  # the authors' RandShiftIntensity offset, in HU before normalisation


def adapter_transforms(crop_size: int, normalization: dict[str, Any], dummy_2d: bool = False):
    """3DSAM-adapter's training transforms on a volume already clipped and z-scored by ``normalization``
    (``ct_clip_zscore``: ``lower``, ``upper``, ``mean``, ``std``), (1, K, J, I) image and {0, 1} label.

    As the authors' ``BaseVolumeDataset``: a random intensity shift of up to 20 HU (p 0.5), a crop to the
    body (voxels above the lower clip, after the shift), then a random zoom 0.85-1.25 (p 0.8; "dummy 2D":
    a rotation of up to 30 degrees about the slice axis (p 0.3) and an in-plane zoom 0.9-1.1 (p 0.3)), the
    label interpolated like the image and binarised at 0.5, padding to 1.2 x the crop, a 1.2 x crop on a
    tumour voxel with probability 2/3, a random ``crop_size``^3 crop inside it, flips on each axis (p 0.5)
    and a random multiple of 90 degrees in plane (p 0.5). Shifts and thresholds are in HU divided by the
    z-score's ``std``, the same operations on normalised values. Returns a ``Compose`` giving a list of one.
    """
    from monai import transforms as mt

    if normalization.get("scheme") != "ct_clip_zscore":
        raise ConfigError("data.augmentation 3dsam_adapter needs the authors' normalisation "
                          f"(model.normalization.scheme ct_clip_zscore), got {normalization.get('scheme')!r}")
    std = float(normalization["std"])
    body = (float(normalization["lower"]) - float(normalization["mean"])) / std
    keys = ["image", "label"]
    outer = [round(crop_size * 1.2)] * 3
    if dummy_2d:
        spatial = [mt.RandRotated(keys, range_x=np.pi / 6, prob=0.3, keep_size=False),
                   mt.RandZoomd(keys, prob=0.3, min_zoom=[1.0, 0.9, 0.9], max_zoom=[1.0, 1.1, 1.1],
                                mode=["trilinear", "trilinear"])]
    else:
        spatial = [mt.RandZoomd(keys, prob=0.8, min_zoom=0.85, max_zoom=1.25, mode=["trilinear", "trilinear"])]
    return mt.Compose([
        mt.RandShiftIntensityd("image", offsets=SHIFT_HU / std, prob=0.5),
        mt.CropForegroundd(keys, source_key="image", select_fn=lambda x: x > body, allow_smaller=True),
        *spatial,
        mt.Lambdad("label", lambda label: (label > 0.5).float()),
        mt.SpatialPadd(keys, spatial_size=outer),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=outer, pos=2, neg=1, num_samples=1),
        mt.RandSpatialCropd(keys, roi_size=[crop_size] * 3, random_size=False),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=2),
        mt.RandRotate90d(keys, prob=0.5, max_k=3),
    ])


def target_mask(label: np.ndarray, target_labels: list[int] | None) -> np.ndarray:
    """(K, J, I) integer label map -> {0, 1} uint8 mask of ``target_labels`` (every non-zero label if None)."""
    if target_labels is None:
        return (label > 0).astype(np.uint8)
    return np.isin(label, np.asarray(target_labels)).astype(np.uint8)


def click_sample_fn(crop_size: int, positive: int, random: int, channels: int,
                    target_labels: list[int] | None = None, augmentation: str = "none",
                    normalization: dict[str, Any] | None = None):
    """Sample function: a crop around the target, ``channels`` copies of the image, and clicks.

    ``augmentation`` is one of ``AUGMENTATIONS``: ``none`` centres the crop on the target without
    augmenting; the others apply ``adapter_transforms``. Returns ``image`` (channels, S, S, S), ``label``
    (1, S, S, S) in {0, 1} and ``points`` (N, 3) float crop voxel indices (a0, a1, a2), the ``positive``
    ones on the target first (anywhere in the crop when it holds none of the target).
    """
    from tsfm_training.data.transforms import training_transforms

    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"data.augmentation {augmentation!r} is not one of {AUGMENTATIONS}")
    if augmentation == "none":
        transforms = training_transforms((crop_size,) * 3, foreground_ratio=1.0, augmentation=False)
    else:
        transforms = adapter_transforms(crop_size, normalization or {}, dummy_2d=augmentation == "3dsam_adapter_2d")

    def make_sample(case, rng: np.random.Generator) -> dict[str, Any]:
        if case.label is None:
            raise ValueError(f"case {case.case_id!r} has no label map; adapter fine-tuning needs one")
        transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
        label = target_mask(case.label, target_labels)[None]
        if augmentation != "none":
            label = label.astype(np.float32)  # interpolated with the image, then binarised
        sample = transforms({"image": case.image, "label": label})[0]
        image = np.asarray(sample["image"].as_tensor() if hasattr(sample["image"], "as_tensor") else sample["image"])
        label = np.asarray(sample["label"].as_tensor() if hasattr(sample["label"], "as_tensor") else sample["label"])
        inside = np.argwhere(label[0] > 0)
        if len(inside) == 0:  # the crop is centred on the object, so this only happens for empty labels
            inside = np.argwhere(np.ones_like(label[0], dtype=bool))
        on_object = inside[rng.integers(0, len(inside), size=positive)]
        anywhere = rng.integers(0, crop_size, size=(random, 3))
        points = np.concatenate([on_object, anywhere]).astype(np.float32)
        return {"image": np.repeat(image[:1], channels, axis=0), "label": label.astype(np.uint8), "points": points}

    return make_sample


def run(config: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    import torch

    from tsfm_training import distributed
    from tsfm_training.data.preprocess import Preprocessing, prepare_training_cases
    from tsfm_training.data.sampler import PatchBatches
    from tsfm_training.export import export_model
    from tsfm_training.loop import LoopConfig, batch_per_rank, fit
    from tsfm_training.networks import card_from_config
    from tsfm_training.objectives.supervised import DiceCELoss
    from tsfm_training.recipes.supervised import initialise, seeded_network, trained_network

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    output_dir = Path(config.get("output_dir", "out/training/adapter"))
    card = card_from_config(section(config, "model"))
    if card.kind != "promptable" or len(set(card.patch_size)) != 1:
        raise ConfigError("the adapter recipe needs a promptable model with a cubic patch_size (the crop)")
    prompts = section(config, "prompts", required=False)
    data = section(config, "data")
    preprocessing = Preprocessing.from_card(card)
    prepared = prepare_training_cases(data, preprocessing, output_dir / "cache")

    loop = LoopConfig.from_dict({**section(config, "loop"), "output_dir": output_dir / "train"})
    info = distributed.setup(loop.device)
    loop.device = info.device
    targets = data.get("target_labels")
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, int) and t > 0 for t in targets)):
        raise ConfigError(f"data.target_labels must list positive label values, e.g. [2], got {targets!r}")
    sample = click_sample_fn(card.patch_size[0], int(prompts.get("positive", 10)), int(prompts.get("random", 20)),
                             card.in_channels, targets, str(data.get("augmentation", "none")), card.normalization)
    per_rank = batch_per_rank(loop, int(data.get("batch_size", 1)), info.world_size)
    batches = PatchBatches(prepared, sample, per_rank, loop.seed, stream=info.rank)
    network = seeded_network(card, loop.seed)
    init = {"mode": "adapters", **section(config, "init", required=False)}
    sam_report = initialise_from_sam(network, init.pop("sam_checkpoint", None), init.get("checkpoint"))
    _, init_report = initialise(network, card, init)
    init_report.update(sam_report)
    network = distributed.wrap(network, info, section(config, "distributed", required=False).get("strategy", "ddp"))
    criterion = DiceCELoss(include_background=False, ce_weight=0.5, dice_weight=0.5)

    def loss_fn(model, batch):
        return criterion(model(batch["image"], batch["points"]), batch["label"])

    log.info("adapter fine-tuning on %d cases", len(prepared))
    result = fit(network, batches, loss_fn, loop, run_config=config)
    if not info.is_main:
        distributed.cleanup()
        return {"rank": info.rank, "train": result}
    card = dataclasses.replace(card, provenance={**card.provenance, "recipe": "adapter", "steps": loop.steps,
                                                 "init": init_report, "training_cases": len(prepared),
                                                 "target_labels": targets})
    model_dir = export_model(trained_network(card, Path(result["checkpoint"])), card, output_dir / "model")
    distributed.cleanup()
    return {"output_dir": str(output_dir), "model": str(model_dir), "train": result, "init": init_report}


def initialise_from_sam(network, sam_checkpoint: str | None, checkpoint: str | None) -> dict[str, Any]:
    """Copy Segment Anything's 2D image encoder (``sam_vit_b_01ec64.pth``) into the 3D network, as the paper
    starts adapter training; returns what the card's provenance records."""
    if not sam_checkpoint:
        return {}
    if checkpoint:
        raise ConfigError("init gives both checkpoint and sam_checkpoint; start from one of them")
    import torch
    from tsfm_backend.models.sam3d import init_from_sam

    path = Path(sam_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"init.sam_checkpoint {path} not found; download SAM ViT-B "
                                "(sam_vit_b_01ec64.pth, from the segment-anything release) and point to it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ValueError(f"init.sam_checkpoint {path}: not a readable state_dict ({error})") from error
    copied = init_from_sam(network, state)
    log.info("initialised the image encoder from SAM %s (%d tensors)", path, len(copied))
    return {"sam_checkpoint": str(path), "sam_tensors": len(copied)}
