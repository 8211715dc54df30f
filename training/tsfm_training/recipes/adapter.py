"""Parameter-efficient fine-tuning of the promptable 3DSAM-adapter model on one tumour type.

As the authors train it: cubic crops (S^3, 128 for the released model) around the tumour, the grey image
repeated to 3 channels, and per crop 10 clicks on random tumour voxels plus 20 on random voxels anywhere
in the crop; loss DiceCE (softmax, background excluded, 0.5 / 0.5); AdamW lr 4e-4, no weight decay, the
rate falling linearly to 1 % (poly, power 1, ``min_lr``), gradient clip 1.0. Only the adapter, norm,
depth-embedding, prompt-encoder and decoder parameters train (``finetune`` mode ``adapters``, the
family's ``TRAINABLE_PATTERNS``).

Config sections as in the supervised recipe (``model`` is a promptable card of family ``sam3d``,
``init.checkpoint`` the starting weights) plus ``prompts``: ``positive`` (10) and ``random`` (20).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_training.config import ConfigError, section

log = logging.getLogger(__name__)


def click_sample_fn(crop_size: int, positive: int, random: int, channels: int):
    """Sample function: a crop centred on the object, ``channels`` copies of the image, and clicks.

    Returns ``image`` (channels, S, S, S), ``label`` (1, S, S, S) in {0, 1} and ``points`` (N, 3) float
    crop voxel indices (a0, a1, a2), the ``positive`` ones on the object first.
    """
    from tsfm_training.data.transforms import training_transforms

    transforms = training_transforms((crop_size,) * 3, foreground_ratio=1.0, augmentation=False)

    def make_sample(case, rng: np.random.Generator) -> dict[str, Any]:
        if case.label is None:
            raise ValueError(f"case {case.case_id!r} has no label map; adapter fine-tuning needs one")
        transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
        sample = transforms({"image": case.image, "label": (case.label > 0).astype(np.uint8)[None]})[0]
        image = np.asarray(sample["image"].as_tensor() if hasattr(sample["image"], "as_tensor") else sample["image"])
        label = np.asarray(sample["label"].as_tensor() if hasattr(sample["label"], "as_tensor") else sample["label"])
        inside = np.argwhere(label[0] > 0)
        if len(inside) == 0:  # the crop is centred on the object, so this only happens for empty labels
            inside = np.argwhere(np.ones_like(label[0], dtype=bool))
        on_object = inside[rng.integers(0, len(inside), size=positive)]
        anywhere = rng.integers(0, crop_size, size=(random, 3))
        points = np.concatenate([on_object, anywhere]).astype(np.float32)
        return {"image": np.repeat(image[:1], channels, axis=0), "label": label, "points": points}

    return make_sample


def run(config: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    import torch

    from tsfm_training import distributed
    from tsfm_training.data.preprocess import Preprocessing, prepare_training_cases
    from tsfm_training.data.sampler import PatchBatches
    from tsfm_training.export import export_model
    from tsfm_training.loop import LoopConfig, fit
    from tsfm_training.networks import card_from_config, training_network
    from tsfm_training.objectives.supervised import DiceCELoss
    from tsfm_training.recipes.supervised import initialise, trained_network

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
    sample = click_sample_fn(card.patch_size[0], int(prompts.get("positive", 10)), int(prompts.get("random", 20)),
                             card.in_channels)
    batches = PatchBatches(prepared, sample, int(data.get("batch_size", 1)), loop.seed, stream=info.rank)
    network = training_network(card)
    _, init_report = initialise(network, card, {"mode": "adapters", **section(config, "init", required=False)})
    network = distributed.wrap(network, info, section(config, "distributed", required=False).get("strategy", "ddp"))
    criterion = DiceCELoss(include_background=False, ce_weight=0.5, dice_weight=0.5)

    def loss_fn(model, batch):
        return criterion(model(batch["image"], batch["points"]), batch["label"])

    log.info("adapter fine-tuning on %d cases", len(prepared))
    result = fit(network, batches, loss_fn, loop)
    if not info.is_main:
        distributed.cleanup()
        return {"rank": info.rank, "train": result}
    card = dataclasses.replace(card, provenance={**card.provenance, "recipe": "adapter", "steps": loop.steps,
                                                 "init": init_report, "training_cases": len(prepared)})
    model_dir = export_model(trained_network(card, Path(result["checkpoint"])), card, output_dir / "model")
    distributed.cleanup()
    return {"output_dir": str(output_dir), "model": str(model_dir), "train": result, "init": init_report}
