"""Supervised softmax Dice + cross-entropy with deep supervision, as nnU-Net and STU-Net train.

nnU-Net's ``DC_and_CE_loss``: soft Dice over the foreground classes (``do_bg=False``), computed over the
whole batch (``batch_dice``) with smoothing 1e-5, plus cross-entropy, weights 1 and 1. With deep
supervision every decoder output is scored against the label map downsampled (nearest) to its size,
weighted 1, 1/2, 1/4, ... with the lowest resolution dropped, normalised to sum to 1.
The Volume Fusion objective reuses this loss with weights 0.5/0.5 and the background included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_per_class(
    probabilities: torch.Tensor,
    onehot: torch.Tensor,
    batch_dice: bool = True,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice ``(2tp + s) / (2tp + fp + fn + s)``.

    probabilities, onehot: (B, C, Z, Y, X) float in [0, 1]. Returns (C,) when ``batch_dice`` (sums over
    batch and space, and over the ranks of a distributed run) else (B, C).
    """
    axes = (0, *range(2, probabilities.ndim)) if batch_dice else tuple(range(2, probabilities.ndim))
    tp = (probabilities * onehot).sum(axes)
    fp = (probabilities * (1 - onehot)).sum(axes)
    fn = ((1 - probabilities) * onehot).sum(axes)
    if batch_dice:  # under torchrun the batch is every rank's together, as nnU-Net gathers it
        from tsfm_training.distributed import sum_over_ranks

        tp, fp, fn = sum_over_ranks(tp, fp, fn)
    return (2 * tp + smooth) / torch.clamp(2 * tp + fp + fn + smooth, min=1e-8)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, Z, Y, X) or (B, Z, Y, X) integer labels -> (B, num_classes, Z, Y, X) float."""
    if labels.ndim >= 5 and labels.shape[1] == 1:
        labels = labels[:, 0]
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label values must lie in [0, {num_classes - 1}], got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels, num_classes).movedim(-1, 1).float()


class DiceCELoss(nn.Module):
    """``ce_weight·CE + dice_weight·(1 - mean Dice)`` for softmax logits (B, C, Z, Y, X) and labels (B, 1, Z, Y, X)."""

    def __init__(self, include_background: bool = False, batch_dice: bool = True, smooth: float = 1e-5,
                 ce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        onehot = one_hot(labels, num_classes)
        target = onehot.argmax(1)
        ce = F.cross_entropy(logits.float(), target)
        dice = soft_dice_per_class(torch.softmax(logits.float(), 1), onehot, self.batch_dice, self.smooth)
        if not self.include_background:
            dice = dice[..., 1:]
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())


def deep_supervision_weights(count: int) -> list[float]:
    """nnU-Net v2: 1/2^i for output i (full resolution first), the lowest resolution set to 0, normalised."""
    if count == 1:
        return [1.0]
    weights = [1 / 2**i for i in range(count)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, 1, Z, Y, X) labels to spatial ``size``; no new label values appear."""
    if tuple(labels.shape[2:]) == tuple(size):
        return labels
    return F.interpolate(labels.float(), size=tuple(size), mode="nearest").to(labels.dtype)


class DeepSupervisionLoss(nn.Module):
    """Applies ``criterion`` to each output of a deep-supervised network with nnU-Net's weights.

    ``outputs``: one tensor (B, C, Z, Y, X), or a sequence of them, full resolution first.
    ``labels``: (B, 1, Z, Y, X) at full resolution (or per-class targets; any (B, C', ...) tensor resized nearest).
    """

    def __init__(self, criterion: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.criterion = criterion
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.criterion(outputs, labels)
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but {len(weights)} weights")
        total = outputs[0].new_zeros(())
        for weight, output in zip(weights, outputs, strict=True):
            if weight:
                total = total + weight * self.criterion(output, downsample_labels(labels, output.shape[2:]))
        return total


def supervised_loss_fn(criterion: nn.Module, image_key: str = "image", label_key: str = "label"):
    """``loss_fn(model, batch)`` for ``tsfm_training.loop.fit``: ``criterion(model(batch[image]), batch[label])``."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return criterion(model(batch[image_key]), batch[label_key])

    return loss_fn


def build_supervised_loss(settings: dict | None = None) -> DeepSupervisionLoss:
    """The criterion from a config's ``objective`` section (keys of ``DiceCELoss`` plus ``ds_weights``)."""
    settings = dict(settings or {})
    settings.pop("name", None)
    ds_weights = settings.pop("ds_weights", None)
    try:
        return DeepSupervisionLoss(DiceCELoss(**settings), ds_weights)
    except TypeError as error:
        raise ValueError(f"objective settings {settings}: {error}") from error
