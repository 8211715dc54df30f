"""Fine-tuning: weights by name from a saved model, new head, first-conv tiling, and what each mode trains."""

from __future__ import annotations

import pytest
import torch
from support.tiny_models import tiny_card
from tsfm_backend.checkpoints import save_model
from tsfm_backend.models import build_network, family_module
from tsfm_training.finetune import (
    FinetuneError,
    apply_mode,
    load_pretrained,
    trainable_names,
    transfer_weights,
)
from tsfm_training.networks import training_network

STUNET = family_module("stunet")


def saved_tiny(tmp_path, classes=None, in_channels=1):
    card = tiny_card(classes=classes or {1: "a", 2: "b", 3: "c", 4: "d"}, in_channels=in_channels,
                     patch_size=(16, 32, 32))
    torch.manual_seed(1)
    network = build_network(card)
    return network, card, save_model(network, card, tmp_path / "pretrained")


def test_new_head_for_a_new_label_set(tmp_path):
    source, _, folder = saved_tiny(tmp_path)
    target_card = tiny_card(classes={1: "tumour"}, patch_size=(16, 32, 32))
    target = training_network(target_card, deep_supervision=True)
    fresh_head = target.seg_outputs[0].weight.detach().clone()
    report = load_pretrained(target, str(folder), STUNET)
    assert report["format"] == "tsfm" and report["missing"] == 0 and report["new_head"] == 10
    assert report["loaded"] == len(target.state_dict()) - 10
    for name, value in source.state_dict().items():
        if not name.startswith("seg_outputs."):
            assert torch.equal(value, target.state_dict()[name]), name
    assert torch.equal(target.seg_outputs[0].weight, fresh_head)
    assert target.seg_outputs[0].weight.shape[0] == 2
    outputs = target(torch.zeros(1, 1, 16, 32, 32))
    assert isinstance(outputs, tuple) and outputs[0].shape == (1, 2, 16, 32, 32)


def test_first_conv_is_tiled_for_more_input_channels(tmp_path):
    source, _, folder = saved_tiny(tmp_path)
    target = training_network(tiny_card(classes={1: "a", 2: "b", 3: "c", 4: "d"}, in_channels=3,
                                        patch_size=(16, 32, 32)))
    report = load_pretrained(target, str(folder), STUNET)
    assert report["tiled"] == 2  # conv1 and the residual conv3 of the first block
    weight = source.conv_blocks_context[0][0].conv1.weight
    tiled = target.conv_blocks_context[0][0].conv1.weight
    assert tiled.shape[1] == 3 and all(torch.equal(tiled[:, c:c + 1], weight) for c in range(3))


def test_incompatible_weights_are_named(tmp_path):
    _, _, folder = saved_tiny(tmp_path)
    card = tiny_card(patch_size=(16, 32, 32))
    other = dict(card.architecture, dims=[8, 8, 8, 16, 16, 16])
    network = STUNET.build(**{k: v for k, v in other.items() if k != "preset"}, depth=[1] * 6)
    with pytest.raises(FinetuneError, match=r"shape mismatch: conv_blocks_context\.0"):
        load_pretrained(network, str(folder), STUNET)
    state = {k: v for k, v in training_network(card).state_dict().items() if "conv_blocks_localization" not in k}
    with pytest.raises(FinetuneError, match="not in the checkpoint: conv_blocks_localization"):
        transfer_weights(training_network(card), state, STUNET)


def test_modes_choose_the_trainable_parameters(tmp_path):
    network = training_network(tiny_card(patch_size=(16, 32, 32)))
    names = {n for n, _ in network.named_parameters()}
    assert trainable_names(network, STUNET, "full") == names
    frozen = trainable_names(network, STUNET, "frozen_encoder")
    assert frozen and not any(n.startswith("conv_blocks_context.") for n in frozen)
    assert any(n.startswith("conv_blocks_localization.") for n in frozen)
    adapters = trainable_names(network, STUNET, "adapters")
    assert adapters and all(".norm" in n or n.startswith("seg_outputs.") for n in adapters)
    assert any(n.startswith("seg_outputs.") for n in adapters) and len(adapters) < len(frozen)

    parameters = apply_mode(network, STUNET, "decoder_only")
    assert {id(p) for p in parameters} == {id(p) for p in network.parameters() if p.requires_grad}
    assert not network.conv_blocks_context[0][0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="fine-tuning mode 'lora'"):
        apply_mode(network, STUNET, "lora")


def test_adapter_mode_uses_3dsam_trainable_patterns():
    sam3d = family_module("sam3d")
    network = sam3d.build(**sam3d.PRESETS["tiny"])
    names = trainable_names(network, sam3d, "adapters")
    assert names == {n for n, _ in network.named_parameters() if sam3d.is_trainable(n)}
    assert any(".adapter." in n for n in names)
    assert not any(n.endswith("attn.qkv.weight") for n in names)  # SAM's attention stays frozen


def test_from_official_nnunet_v2_stunet_and_pymic_pctnet(tmp_path):
    from support.official_checkpoints import stunet_for, write_pymic_checkpoint, write_v2_results

    pools = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    official = stunet_for("S", 3, pools)
    checkpoint = write_v2_results(tmp_path / "v2", official, "STUNetTrainer_small", {"liver": 1, "tumour": 2})
    target = STUNET.build(input_channels=2, num_classes=2, preset="S", pool_op_kernel_sizes=pools)
    report = load_pretrained(target, str(checkpoint), STUNET)
    assert report["format"] == "nnunet_v2" and report["tiled"] == 2 and report["new_head"] == 10
    assert torch.equal(target.conv_blocks_localization[0][0].conv1.weight,
                       official.conv_blocks_localization[0][0].conv1.weight)

    pctnet = family_module("pctnet")
    pretrained = pctnet.build(1, 5, "tiny")
    path = write_pymic_checkpoint(tmp_path / "pctnet_volf.pt", pretrained)
    downstream = pctnet.build(1, 2, "tiny")
    report = load_pretrained(downstream, str(path), pctnet)
    assert report["format"] == "pymic" and report["new_head"] > 0 and report["missing"] == 0
    encoder = {n: v for n, v in pretrained.state_dict().items() if n.startswith("pyramid_ct.down")}
    assert encoder and all(torch.equal(v, downstream.state_dict()[n]) for n, v in encoder.items())
