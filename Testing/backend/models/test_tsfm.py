"""TSFM: residual CNN + ViT bottleneck; sizes, outputs, activation checkpointing, declared keys."""

from __future__ import annotations

import pytest
import torch
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import build_network, tsfm


def _count(preset: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in tsfm.build(1, 10, preset).parameters())


def test_paper_preset_has_1_6_billion_parameters_within_5_percent():
    assert abs(_count("paper") - 1.6e9) / 1.6e9 < 0.05


def test_presets_grow_and_keep_a_12_layer_vit_b_bottleneck():
    counts = [_count(name) for name in ("tiny", "small", "base", "large", "paper")]
    assert counts == sorted(counts)
    with torch.device("meta"):
        network = tsfm.build(1, 10, "paper")
    assert len(network.bottleneck.layers) == 12
    assert network.bottleneck.layers[0].qkv.weight.shape == (3 * 768, 768)


def test_tiny_forward_shapes_and_deep_supervision_order():
    torch.manual_seed(0)
    network = tsfm.build(2, 3, "tiny").eval()
    x = torch.randn(1, 2, 16, 24, 32)
    with torch.no_grad():
        single = network(x)
        network.deep_supervision = True
        outputs = network(x)
    assert single.shape == (1, 3, 16, 24, 32)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 24, 32), (8, 12, 16), (4, 6, 8)]
    torch.testing.assert_close(outputs[0], single)


def test_bottleneck_changes_the_output_and_upsampling_is_interpolation_then_1x1():
    torch.manual_seed(0)
    network = tsfm.build(1, 2, "tiny").eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = network(x)
        network.bottleneck.proj_out.weight.mul_(2)
        assert not torch.allclose(before, network(x))
        low = torch.randn(1, 32, 2, 2, 2)
        layer = network.upsample[0]
        expected = layer.conv(torch.nn.functional.interpolate(low, scale_factor=2.0, mode="trilinear"))
        torch.testing.assert_close(layer(low), expected)
    assert layer.conv.kernel_size == (1, 1, 1) and layer.conv.in_channels == 32


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tsfm.build(1, 2, "tiny")
    checkpointed = tsfm.build(1, 2, "tiny", activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    for network in (plain, checkpointed):
        network.train()
        network(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_declared_keys_split_encoder_bottleneck_and_heads():
    keys = list(tsfm.build(1, 2, "tiny").state_dict())
    assert [k for k in keys if k.startswith(tsfm.STEM_KEYS)] == ["stem.weight", "stem.bias"]
    encoder = {k for k in keys if k.startswith(tsfm.ENCODER_KEYS)}
    with torch.device("meta"):
        assert "bottleneck.layers.11.qkv.weight" in tsfm.build(1, 2, "base").state_dict()
    assert not any(k.startswith(("decoder.", "upsample.", "heads.")) for k in encoder)
    assert {k for k in keys if k.startswith(tsfm.HEAD_KEYS)} == {f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}


def test_built_from_a_sigmoid_card():
    card = ModelCard(id="tsfm-tiny", family="tsfm", architecture={"preset": "tiny", "in_channels": 1, "num_classes": 2},
                     classes={1: "liver tumour", 2: "kidney tumour"}, output="sigmoid", patch_size=(16, 16, 16))
    network = build_network(card)
    assert not network.training
    with torch.no_grad():
        assert network(torch.randn(1, 1, 16, 16, 16)).shape == (1, card.num_classes, 16, 16, 16)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="len\\(dims\\) == len\\(depth\\)"):
        tsfm.TSFM(1, 2, dims=[8, 16], depth=[1])
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        tsfm.build(1, 2, "tiny", embed_dim=30, num_heads=4)
