"""Objectives: supervised Dice+CE with deep supervision, partial-label BCE+Dice, Volume Fusion on real CT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tsfm_training.objectives.partial_label import PartialLabelLoss, class_targets
from tsfm_training.objectives.supervised import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    soft_dice_per_class,
)
from tsfm_training.objectives.volume_fusion import (
    VolumeFusionSettings,
    crop_pair,
    fuse,
    fusion_mask,
    volume_fusion_sample,
)


def labels_and_perfect_logits(num_classes=3, shape=(2, 1, 8, 8, 8), seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, shape, generator=generator)
    logits = 50.0 * torch.nn.functional.one_hot(labels[:, 0], num_classes).movedim(-1, 1).float()
    return labels, logits


def test_dice_ce_is_near_zero_for_perfect_and_large_for_wrong_predictions():
    labels, logits = labels_and_perfect_logits()
    loss = DiceCELoss()
    assert float(loss(logits, labels)) < 1e-4
    assert float(loss(-logits, labels)) > 1.5
    # Dice of a known overlap: prediction covers half of a 4-voxel object -> 2·2/(2·2+0+2) = 2/3.
    target = torch.zeros(1, 2, 1, 1, 4)
    target[0, 1, 0, 0, :] = 1
    target[0, 0] = 1 - target[0, 1]
    prediction = torch.zeros_like(target)
    prediction[0, 1, 0, 0, :2] = 1
    prediction[0, 0] = 1 - prediction[0, 1]
    assert float(soft_dice_per_class(prediction, target, smooth=0)[1]) == pytest.approx(2 / 3)


def test_dice_ce_names_out_of_range_labels():
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 1\]"):
        DiceCELoss()(torch.zeros(1, 2, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 3))


def test_deep_supervision_weights_and_downsampled_targets():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)
    assert w == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    labels, full = labels_and_perfect_logits(shape=(1, 1, 8, 8, 8))
    # The half-resolution output is judged against nearest-downsampled labels: a perfect one scores ~0.
    half_labels = torch.nn.functional.interpolate(labels.float(), size=(4, 4, 4), mode="nearest").long()
    half = 50.0 * torch.nn.functional.one_hot(half_labels[:, 0], 3).movedim(-1, 1).float()
    criterion = DeepSupervisionLoss(DiceCELoss())
    assert float(criterion((full, half, torch.zeros(1, 3, 2, 2, 2)), labels)) < 1e-3
    assert float(criterion((full, -half, torch.zeros(1, 3, 2, 2, 2)), labels)) > 0.5


def test_partial_label_loss_ignores_unannotated_classes():
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1  # case 0 annotates class 1 only
    labels[1, 0, 2:] = 2  # case 1 annotates class 2 only
    target = class_targets(labels, 2)
    assert target.shape == (2, 2, 4, 4, 4) and target[0, 0].sum() == 32 and target[1, 1].sum() == 32
    perfect = 40.0 * (2 * target - 1)
    annotated = torch.tensor([[True, False], [False, True]])
    criterion = PartialLabelLoss()
    assert float(criterion(perfect, labels, annotated)) < 1e-3

    # Case 0 predicts class 2 everywhere: wrong for a class it does not annotate, so no penalty...
    wrong_unannotated = perfect.clone()
    wrong_unannotated[0, 1] = 40.0
    assert float(criterion(wrong_unannotated, labels, annotated)) < 1e-3
    # ...while claiming every class is annotated makes the same prediction costly.
    assert float(criterion(wrong_unannotated, labels, torch.ones(2, 2, dtype=torch.bool))) > 0.3
    with pytest.raises(ValueError, match=r"annotated must be \(B, C\)"):
        criterion(perfect, labels, torch.ones(2, 3, dtype=torch.bool))


def test_partial_label_gradients_reach_only_annotated_outputs():
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    logits = torch.zeros(2, 2, 4, 4, 4, requires_grad=True)
    PartialLabelLoss()(logits, labels, torch.tensor([[True, False], [True, True]])).backward()
    assert logits.grad[0, 1].abs().sum() == 0
    assert logits.grad[0, 0].abs().sum() > 0 and logits.grad[1].abs().sum() > 0


def test_fusion_mask_is_a_block_grid_with_seventy_percent_foreground():
    settings = VolumeFusionSettings(patch_size=(20, 40, 40), block_min=(5, 8, 8), block_max=(5, 8, 8))
    mask = fusion_mask((20, 40, 40), settings, np.random.default_rng(3))
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
    blocks = mask.reshape(4, 5, 5, 8, 5, 8).transpose(0, 2, 4, 1, 3, 5).reshape(100, -1)
    assert all(len(np.unique(b)) == 1 for b in blocks)  # constant inside each block
    assert int((blocks[:, 0] > 0).sum()) == 70


def test_fused_image_blends_with_the_published_coefficients():
    settings = VolumeFusionSettings(patch_size=(16, 32, 32), block_min=(4, 4, 4), block_max=(8, 8, 8))
    rng = np.random.default_rng(0)
    a, b = np.full((16, 32, 32), 1.0, np.float32), np.zeros((16, 32, 32), np.float32)
    fused, label = fuse(a, b, settings, rng)
    np.testing.assert_allclose(fused, label / 4.0, atol=1e-6)
    assert set(np.unique(fused).round(4)) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_volume_fusion_on_real_ct(shared_data):
    import nibabel as nib

    ct = np.asarray(nib.load(shared_data / "sts" / "STS_001" / "ct.nii.gz").dataobj, dtype=np.float32)
    volume = ct.transpose(2, 1, 0)  # nibabel (I, J, K) -> (K, J, I)
    settings = VolumeFusionSettings(patch_size=(16, 48, 48), block_min=(4, 8, 8), block_max=(8, 16, 16))
    first = volume_fusion_sample(volume, settings, np.random.default_rng(11))
    again = volume_fusion_sample(volume, settings, np.random.default_rng(11))
    assert first["image"].shape == (1, 16, 48, 48) and first["label"].shape == (1, 16, 48, 48)
    assert first["image"].dtype == np.float32 and first["label"].dtype == np.uint8
    np.testing.assert_array_equal(first["image"], again["image"])
    assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0  # contrast-adjusted views
    p1, p2 = crop_pair(volume, settings, np.random.default_rng(5))
    assert p1.shape == p2.shape == (16, 48, 48) and not np.array_equal(p1, p2)
    with pytest.raises(ValueError, match="D, H, W"):
        crop_pair(volume[0], settings, np.random.default_rng(0))
