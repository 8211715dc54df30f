"""Volume Fusion self-supervised pretraining (MIS-FM) of any segmentation network on unlabelled CT.

Config sections as in the supervised recipe (``output_dir``, ``threads``, ``model``, ``data``, ``loop``)
plus ``volume_fusion`` (``VolumeFusionSettings`` fields; ``patch_size`` defaults to the card's). The
model card must have ``num_classes`` = 5 outputs (classes 1..4 = fusion weights 1/4..1); labels in the
datasets are ignored, and the ``data.validation`` cases are left out so a later fine-tuning can be scored
on images the pretraining never saw. The exported model is the starting point for ``init.checkpoint``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tsfm_training.config import ConfigError, section

log = logging.getLogger(__name__)


def run(config: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    import torch

    from tsfm_training import distributed
    from tsfm_training.data.preprocess import Preprocessing, prepare_training_cases
    from tsfm_training.data.sampler import PatchBatches, volume_fusion_sample_fn
    from tsfm_training.export import export_model
    from tsfm_training.loop import LoopConfig, batch_per_rank, fit
    from tsfm_training.networks import card_from_config
    from tsfm_training.objectives.supervised import supervised_loss_fn
    from tsfm_training.objectives.volume_fusion import VolumeFusionSettings, volume_fusion_criterion
    from tsfm_training.recipes.supervised import seeded_network, trained_network

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    output_dir = Path(config.get("output_dir", "out/training/volume_fusion"))
    card = card_from_config(section(config, "model"))
    fusion = dict(section(config, "volume_fusion", required=False))
    fusion.setdefault("patch_size", list(card.patch_size))
    deep_supervision = bool(fusion.pop("deep_supervision", True))
    settings = VolumeFusionSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in fusion.items()})
    if card.num_classes != settings.num_classes:
        raise ConfigError(f"Volume Fusion predicts {settings.num_classes} classes; the model card has "
                          f"{card.num_classes} outputs")

    data = section(config, "data")
    preprocessing = Preprocessing.from_card(card)
    prepared = prepare_training_cases(data, preprocessing, output_dir / "cache")
    loop = LoopConfig.from_dict({**section(config, "loop"), "output_dir": output_dir / "train"})
    parallel = section(config, "distributed", required=False)
    info = distributed.setup(loop.device)
    loop.device = info.device
    per_rank = batch_per_rank(loop, int(data.get("batch_size", 2)), info.world_size)
    batches = PatchBatches(prepared, volume_fusion_sample_fn(settings), per_rank, loop.seed, stream=info.rank)
    log.info("Volume Fusion pretraining on %d volumes", len(prepared))

    network = seeded_network(card, loop.seed, deep_supervision=deep_supervision)
    network = distributed.wrap(network, info, parallel.get("strategy", "ddp"),
                               bool(parallel.get("activation_checkpointing", False)),
                               bool(parallel.get("find_unused_parameters", True)))
    result = fit(network, batches, supervised_loss_fn(volume_fusion_criterion()), loop, run_config=config)
    if not info.is_main:
        distributed.cleanup()
        return {"rank": info.rank, "train": result}
    card = dataclasses.replace(card, provenance={**card.provenance, "recipe": "volume_fusion",
                                                 "steps": loop.steps, "pretraining_cases": len(prepared)})
    model_dir = export_model(trained_network(card, Path(result["checkpoint"])), card, output_dir / "model")
    distributed.cleanup()
    return {"output_dir": str(output_dir), "model": str(model_dir), "train": result}
