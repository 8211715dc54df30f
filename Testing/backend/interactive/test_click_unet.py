"""The click-conditioned U-Net family: shapes, STU-Net weight names, prompt channels."""

from __future__ import annotations

import torch
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import build_network
from tsfm_backend.models import stunet as stunet_family
from tsfm_backend.models.click_unet import PROMPT_CHANNELS, encode_prompts


def card(preset="tiny") -> ModelCard:
    return ModelCard(id="c", family="click_unet", architecture={"preset": preset, "click_radius_mm": 4.0},
                     kind="promptable", classes={1: "object"}, spacing=(3.0, 2.0, 2.0), output="sigmoid")


def test_build_maps_image_plus_prompts_to_one_logit():
    network = build_network(card())
    assert network.divisor == (16, 32, 32) and network.click_radius_mm == 4.0
    x = torch.randn(1, 1 + len(PROMPT_CHANNELS), 32, 64, 64)
    with torch.no_grad():
        y = network(x)
    assert y.shape == (1, 1, 32, 64, 64) and card().num_classes == 1


def test_weight_names_are_stunet_names():
    click = build_network(card()).state_dict()
    plain = stunet_family.STUNet(5, 1, dims=[4, 4, 8, 8, 16, 16],
                                 pool_op_kernel_sizes=build_network(card()).pool_op_kernel_sizes).state_dict()
    assert list(click) == list(plain)
    assert all(k.startswith(("conv_blocks_context.", "upsample_layers.", "conv_blocks_localization.",
                             "seg_outputs.")) for k in click)


def test_default_preset_fits_the_bundle_budget():
    network = build_network(card("small"))
    assert sum(p.numel() for p in network.parameters()) * 4 < 20 * 2 ** 20


def test_encode_prompts_draws_balls_boxes_and_previous():
    shape = (10, 20, 20)
    previous = torch.zeros(shape)
    previous[0, 0, 0] = 0.9
    channels = encode_prompts(
        shape, (2.0, 1.0, 1.0), 3.0,
        positive=torch.tensor([[5.0, 10.0, 10.0]]), negative=torch.tensor([[5.0, 4.0, 16.0], [50.0, 0.0, 0.0]]),
        boxes=torch.tensor([[[1.0, 12.0, 12.0], [3.0, 25.0, 15.0]]]), previous=previous,
    )
    positive, negative, box, prev = channels
    assert channels.shape == (4, *shape)
    # A 3 mm ball: 1.5 voxels along k (2 mm), 3 voxels along j and i (1 mm).
    assert positive[5, 10, 13] == 1 and positive[5, 10, 14] == 0
    assert positive[6, 10, 10] == 1 and positive[7, 10, 10] == 0
    assert negative[5, 4, 16] == 1 and negative.sum() == positive.sum()  # the far click is off the grid
    assert box[1:4, 12:20, 12:16].all() and box.sum() == 3 * 8 * 4
    assert prev[0, 0, 0] == 1 and prev.sum() == 1


def test_encode_prompts_without_prompts_is_zero():
    channels = encode_prompts((4, 4, 4), (1.0, 1.0, 1.0), 5.0)
    assert channels.shape == (4, 4, 4, 4) and channels.sum() == 0
