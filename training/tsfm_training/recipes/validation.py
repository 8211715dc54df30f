"""Validation during training (``loop.validate_every``): nnU-Net's online "pseudo Dice" on held-out patches.

Every ``validate_every`` steps the network segments a fixed set of patches of the held-out cases (drawn
once, from a fixed seed, without augmentation, half of them centred on a labelled voxel); per class the
true/false positives and false negatives are summed over all patches, and the Dice of each class that
occurs is averaged. The same patches every time, so the curve moves only with the weights. It is a
cheap trend, not the final score: the sliding-window evaluation on whole volumes comes at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tsfm_training.config import ConfigError


def validation_patches(cases: Sequence[Any], patch_size: Sequence[int], count: int, seed: int,
                       ) -> list[dict[str, torch.Tensor]]:
    """``count`` patches ``{"image": (C, Z, Y, X) float32, "label": (Z, Y, X) int64}`` from ``cases``
    (prepared cases: ``image`` (C, K, J, I) on the model grid, ``label`` (K, J, I) in class ids)."""
    from tsfm_training.data.transforms import training_transforms

    transforms = training_transforms(patch_size, 0.5, False)
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(count):
        case = cases[int(rng.integers(len(cases)))]
        transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
        sample = transforms({"image": case.image, "label": case.label[None]})[0]
        patches.append({"image": torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32),
                        "label": torch.as_tensor(np.asarray(sample["label"])[0], dtype=torch.int64)})
    return patches


def pseudo_dice(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], sigmoid: bool) -> float:
    """Mean over the classes that occur of ``2tp / (2tp + fp + fn)``, summed over all patches.

    logits: (C, Z, Y, X) per patch (softmax models: C includes background; sigmoid: one channel per class);
    labels: (Z, Y, X) class ids per patch. 0.0 when no class occurs in predictions or labels.
    """
    num_classes = logits[0].shape[0] if sigmoid else logits[0].shape[0] - 1
    tp = torch.zeros(num_classes, dtype=torch.float64)
    fp, fn = tp.clone(), tp.clone()
    for logit, label in zip(logits, labels, strict=True):
        winner = logit.argmax(0)
        for c in range(1, num_classes + 1):
            predicted = logit[c - 1] > 0 if sigmoid else winner == c
            truth = label == c
            tp[c - 1] += float((predicted & truth).sum())
            fp[c - 1] += float((predicted & ~truth).sum())
            fn[c - 1] += float((~predicted & truth).sum())
    occurs = (tp + fp + fn) > 0
    if not bool(occurs.any()):
        return 0.0
    return float((2 * tp / torch.clamp(2 * tp + fp + fn, min=1))[occurs].mean())


def validation_fn(cases: Sequence[Any], patch_size: Sequence[int], sigmoid: bool, count: int = 10,
                  seed: int = 0, batch_size: int = 2) -> Callable[[nn.Module, int], dict[str, float]]:
    """``validate(network, step) -> {"pseudo_dice": ...}`` for ``loop.fit``. Every rank computes the same
    figure on the same patches (an FSDP forward needs every rank)."""
    if not cases:
        raise ConfigError("loop.validate_every needs held-out cases: list them in data.validation")
    patches = validation_patches(cases, patch_size, count, seed)

    def validate(network: nn.Module, step: int) -> dict[str, float]:
        device = next(network.parameters()).device
        logits: list[torch.Tensor] = []
        for start in range(0, len(patches), batch_size):
            images = torch.stack([p["image"] for p in patches[start:start + batch_size]]).to(device)
            output = network(images)
            output = output[0] if isinstance(output, list | tuple) else output
            logits.extend(output.float().cpu())
        return {"pseudo_dice": pseudo_dice(logits, [p["label"] for p in patches], sigmoid)}

    return validate


def held_out_validation(validation_cases: Sequence[Any], pool, card, data: dict[str, Any], seed: int,
                        batch_size: int) -> Callable[[nn.Module, int], dict[str, float]]:
    """``validation_fn`` on the held-out cases of the supervised recipe, preprocessed as training sees
    them and labelled in the pool's class ids; ``data.validation_batches`` batches (10) per validation."""
    from tsfm_training.data.preprocess import Preprocessing, prepare_case

    settings = Preprocessing.from_card(card)
    index = {entry.case.case_id: i for i, entry in enumerate(pool.entries)}
    prepared = []
    for case in validation_cases:
        prepared_case = prepare_case(case, settings)
        prepared_case.label = pool.remap_labels(index[case.case_id], prepared_case.label)
        prepared.append(prepared_case)
    count = int(data.get("validation_batches", 10)) * batch_size
    return validation_fn(prepared, data.get("patch_size", card.patch_size), card.output == "sigmoid", count,
                         seed + 1, batch_size)
