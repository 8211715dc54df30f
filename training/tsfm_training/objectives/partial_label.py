"""Partial-label loss for a dataset pool: sigmoid BCE + batch Dice over the classes each case annotates.

TSFM merges tumour and organ datasets MultiTalent-style: every class of the merged label space has its own
sigmoid output, and a case only teaches the classes its source dataset annotates. An unannotated class
may be present but unmarked in that case, so it contributes neither BCE nor Dice there.

- BCE: mean over voxels of the annotated (case, class) pairs.
- Dice: per class, tp/fp/fn summed over the cases that annotate it (batch Dice), ``2tp / (2tp+fp+fn)``;
  averaged over the classes annotated by at least one case of the batch.
- loss = BCE + (1 - mean Dice). MultiTalent writes ``ce - dc``; the constant 1 keeps the loss positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class binary targets (B, num_classes, Z, Y, X) float from either

    - a merged label map (B, 1, Z, Y, X) (0 = background, c = class c), or
    - per-class masks (B, num_classes, Z, Y, X) in {0, 1}, which may overlap (a tumour inside its organ);
      with one class the two forms are the same thing.

    Channel ``c - 1`` holds class ``c``: sigmoid outputs have no background channel.
    """
    if labels.ndim >= 5 and labels.shape[1] == num_classes:
        return (labels > 0).float()
    if labels.ndim >= 5 and labels.shape[1] == 1:
        labels = labels[:, 0]
    classes = torch.arange(1, num_classes + 1, device=labels.device).view(1, -1, *([1] * (labels.ndim - 1)))
    return (labels.long().unsqueeze(1) == classes).float()


class PartialLabelLoss(nn.Module):
    """Sigmoid BCE + Dice restricted to annotated classes.

    forward(logits (B, C, Z, Y, X), labels (B, 1, Z, Y, X) ints in [0, C] or (B, C, Z, Y, X) masks,
    annotated (B, C) bool)
    where ``annotated[b, c]`` says case b's dataset annotates class c+1.
    """

    def __init__(self, smooth: float = 1e-5, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        batch, num_classes = logits.shape[:2]
        if tuple(annotated.shape) != (batch, num_classes):
            raise ValueError(f"annotated must be (B, C) = {(batch, num_classes)}, got {tuple(annotated.shape)}")
        mask = annotated.to(logits.device).bool()
        if not mask.any():
            return logits.sum() * 0.0
        logits = logits.float()
        target = class_targets(labels, num_classes)
        spatial = tuple(range(2, logits.ndim))
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(spatial)
        bce = bce[mask].mean()

        probabilities = torch.sigmoid(logits)
        weight = mask.float().view(batch, num_classes, *([1] * len(spatial)))
        axes = (0, *spatial)
        tp = (probabilities * target * weight).sum(axes)
        fp = (probabilities * (1 - target) * weight).sum(axes)
        fn = ((1 - probabilities) * target * weight).sum(axes)
        dice = (2 * tp + self.smooth) / torch.clamp(2 * tp + fp + fn + self.smooth, min=1e-8)
        present = mask.any(0)
        return self.bce_weight * bce + self.dice_weight * (1 - dice[present].mean())


def partial_label_loss_fn(criterion: PartialLabelLoss, ds_weights: list[float] | None = None):
    """``loss_fn(model, batch)`` for the loop; batch has ``image``, ``label`` and ``annotated`` (B, C).

    With a deep-supervised network the outputs (full resolution first) are weighted like nnU-Net.
    """
    from tsfm_training.objectives.supervised import deep_supervision_weights, downsample_labels

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(batch["image"])
        if isinstance(outputs, torch.Tensor):
            return criterion(outputs, batch["label"], batch["annotated"])
        weights = ds_weights or deep_supervision_weights(len(outputs))
        return sum(w * criterion(o, downsample_labels(batch["label"], o.shape[2:]), batch["annotated"])
                   for w, o in zip(weights, outputs, strict=True) if w)

    return loss_fn
