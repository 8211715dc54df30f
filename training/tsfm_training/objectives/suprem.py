"""SuPreM's supervised-pretraining loss: per-class sigmoid BCE plus Dice over the classes present.

What SuPreM's ``train.py`` sums (``DiceLoss`` + ``Multi_BCELoss`` of its ``utils/loss.py``), for sigmoid
logits (B, C, X, Y, Z) and per-organ binary masks (B, C, X, Y, Z) that may overlap:

- **BCE**: ``BCEWithLogits`` averaged over the voxels of each (case, class) pair, then averaged over the
  pairs. Here the pairs are the ones the case's dataset annotates (every pair for AbdomenAtlas, which
  labels all 25 classes: then it is exactly theirs).
- **Dice**: only over the (case, class) pairs whose mask is non-empty in the patch (and annotated). For
  one pair the authors flatten the (X, Y, Z) block to X rows of Y·Z voxels (``view(shape[0], -1)``) and
  average ``1 - 2·Σpt / (Σp + Σt + 1)`` over the X rows: a per-slice Dice along the first spatial axis,
  smoothing 1 in the denominator only (so slices without the organ add a constant 1 and no gradient).
  The pairs' losses are averaged; with no pair present the term is the constant 1.

Compared with a batch Dice averaged over every annotated class, an organ present in the patch keeps
its full weight instead of being diluted by the absent ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tsfm_training.objectives.partial_label import class_targets


def slice_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the first axis of ``1 - 2·Σpt / (Σp + Σt + smooth)``, sums over the other axes.

    probabilities, target: (X, Y, Z) float (one case, one class). Returns a scalar.
    """
    p = probabilities.reshape(probabilities.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    dice = 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


class SupremLoss(nn.Module):
    """forward(logits (B, C, X, Y, Z), labels (B, 1, ...) map or (B, C, ...) masks, annotated (B, C) bool or None).

    ``annotated`` None means every class is annotated (AbdomenAtlas). Returns Dice + BCE (weights 1, 1).
    """

    def __init__(self, smooth: float = 1.0, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor,
                annotated: torch.Tensor | None = None) -> torch.Tensor:
        batch, num_classes = logits.shape[:2]
        if annotated is None:
            annotated = torch.ones(batch, num_classes, dtype=torch.bool, device=logits.device)
        if tuple(annotated.shape) != (batch, num_classes):
            raise ValueError(f"annotated must be (B, C) = {(batch, num_classes)}, got {tuple(annotated.shape)}")
        mask = annotated.to(logits.device).bool()
        if not mask.any():
            return logits.sum() * 0.0
        logits = logits.float()
        target = class_targets(labels, num_classes).to(logits.device)
        spatial = tuple(range(2, logits.ndim))
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(spatial)[mask].mean()

        probabilities = torch.sigmoid(logits)
        present = mask & (target.sum(spatial) > 0)
        pairs = present.nonzero().tolist()
        if pairs:
            dice = torch.stack([slice_dice_loss(probabilities[b, c], target[b, c], self.smooth) for b, c in pairs]).mean()
        else:
            dice = logits.new_tensor(1.0)
        return self.dice_weight * dice + self.bce_weight * bce


def suprem_loss_fn(criterion: SupremLoss, ds_weights: list[float] | None = None):
    """``loss_fn(model, batch)``; ``annotated`` is read from the batch when a pool provides it."""
    from tsfm_training.objectives.supervised import deep_supervision_weights, downsample_labels

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(batch["image"])
        annotated = batch.get("annotated")
        if isinstance(outputs, torch.Tensor):
            return criterion(outputs, batch["label"], annotated)
        weights = ds_weights or deep_supervision_weights(len(outputs))
        return sum(w * criterion(o, downsample_labels(batch["label"], o.shape[2:]), annotated)
                   for w, o in zip(weights, outputs, strict=True) if w)

    return loss_fn
