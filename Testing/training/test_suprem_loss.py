"""SuPreM's loss as its authors compute it: value and gradient against a reference written from their
formula (per-(case, organ) sigmoid BCE; Dice over the organs present, per slice of the first spatial axis,
smoothing 1 in the denominator), on overlapping per-organ masks."""

from __future__ import annotations

import torch
from tsfm_training.objectives.partial_label import PartialLabelLoss
from tsfm_training.objectives.suprem import SupremLoss


def authors_formula(logits: torch.Tensor, masks: torch.Tensor, annotated=None) -> torch.Tensor:
    """Written out term by term from SuPreM's utils/loss.py (DiceLoss + Multi_BCELoss); with
    ``annotated``, only the (case, class) pairs it marks (a partially labelled case)."""
    batch, classes = logits.shape[:2]
    bce_terms, dice_terms = [], []
    for b in range(batch):
        for c in range(classes):
            if annotated is not None and not annotated[b, c]:
                continue
            x, t = logits[b, c], masks[b, c]
            bce_terms.append((torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-x.abs()))).mean())
            if t.sum() > 0:
                p = torch.sigmoid(x)
                rows = []
                for i in range(x.shape[0]):  # their view(shape[0], -1): one Dice per slice of the first axis
                    rows.append(1 - 2 * (p[i] * t[i]).sum() / (p[i].sum() + t[i].sum() + 1))
                dice_terms.append(torch.stack(rows).mean())
    dice = torch.stack(dice_terms).mean() if dice_terms else torch.tensor(1.0)
    return dice + torch.stack(bce_terms).mean()


def overlapping_example() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, 7, generator=generator)
    masks = torch.zeros(2, 4, 5, 6, 7)
    masks[0, 0, 1:4, 1:5, 1:6] = 1  # an organ
    masks[0, 1, 2:3, 2:4, 2:4] = 1  # a tumour inside it: both channels are 1 there
    masks[1, 0, :, :3] = 1
    masks[1, 2, 3:, 3:, 3:] = 1  # class 3 present in case 1 only; class 4 nowhere
    return logits, masks


def test_value_and_gradient_match_the_authors_formula_on_overlapping_masks():
    logits, masks = overlapping_example()
    ours_input = logits.clone().requires_grad_(True)
    ref_input = logits.clone().requires_grad_(True)
    ours = SupremLoss()(ours_input, masks.to(torch.uint8))
    reference = authors_formula(ref_input, masks)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_input.grad, ref_input.grad, rtol=1e-5, atol=1e-8)
    assert ours_input.grad[0, 1].abs().sum() > 0 and ours_input.grad[0, 0].abs().sum() > 0


def test_a_label_map_gives_the_same_loss_as_its_one_hot_masks_and_unannotated_classes_are_skipped():
    logits, masks = overlapping_example()
    label_map = torch.zeros(2, 1, 5, 6, 7, dtype=torch.long)
    label_map[1, 0][masks[1, 0] > 0] = 1
    label_map[1, 0][masks[1, 2] > 0] = 3
    single = masks[1:].clone()
    single[0, 0][masks[1, 2] > 0] = 0  # a label map cannot overlap: class 3 wins where it was drawn last
    torch.testing.assert_close(SupremLoss()(logits[1:], label_map[1:]), authors_formula(logits[1:], single))
    annotated = torch.tensor([[True, True, False, False], [True, False, True, False]])
    torch.testing.assert_close(SupremLoss()(logits, masks, annotated), authors_formula(logits, masks, annotated))
    assert not torch.isclose(SupremLoss()(logits, masks, annotated), SupremLoss()(logits, masks))
    empty = torch.zeros_like(masks)
    torch.testing.assert_close(SupremLoss()(logits, empty), 1 + SupremLoss(dice_weight=0.0)(logits, empty))


def test_a_present_organ_keeps_its_dice_gradient_where_an_average_over_all_classes_dilutes_it():
    logits = torch.zeros(1, 25, 8, 8, 8)
    masks = torch.zeros(1, 25, 8, 8, 8)
    masks[0, 4, 2:6, 2:6, 2:6] = 1  # one organ of 25 in the patch
    suprem_input = logits.clone().requires_grad_(True)
    SupremLoss(bce_weight=0.0)(suprem_input, masks).backward()
    diluted_input = logits.clone().requires_grad_(True)
    PartialLabelLoss(bce_weight=0.0)(diluted_input, masks, torch.ones(1, 25, dtype=torch.bool)).backward()
    ratio = suprem_input.grad[0, 4].abs().sum() / diluted_input.grad[0, 4].abs().sum()
    assert ratio > 10, f"the present organ's Dice gradient is only {ratio:.1f}x the diluted one"
