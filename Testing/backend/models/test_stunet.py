"""STU-Net: official parameter counts, state_dict names and shapes, and forward semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tsfm_backend.models import stunet

TOTALSEG_POOLS = [[2, 2, 2]] * 4 + [[1, 1, 2]]


def _meta(preset: str, num_classes: int = 105):
    with torch.device("meta"):
        return stunet.build(1, num_classes, preset, pool_op_kernel_sizes=TOTALSEG_POOLS)


def _official_keys(depth: int) -> set[str]:
    """The key scheme of the released checkpoints, written out independently of our module."""
    keys = set()
    for d in range(6):
        for j in range(depth):
            for layer in ("conv1", "conv2", "norm1", "norm2") + (("conv3",) if j == 0 else ()):
                keys |= {f"conv_blocks_context.{d}.{j}.{layer}.weight", f"conv_blocks_context.{d}.{j}.{layer}.bias"}
    for u in range(5):
        keys |= {f"upsample_layers.{u}.conv.weight", f"upsample_layers.{u}.conv.bias"}
        keys |= {f"seg_outputs.{u}.weight", f"seg_outputs.{u}.bias"}
        for j in range(depth):
            for layer in ("conv1", "conv2", "norm1", "norm2") + (("conv3",) if j == 0 else ()):
                keys |= {
                    f"conv_blocks_localization.{u}.{j}.{layer}.weight",
                    f"conv_blocks_localization.{u}.{j}.{layer}.bias",
                }
    return keys


@pytest.mark.parametrize(
    ("preset", "params", "num_keys", "depth"),
    [("S", 14_596_941, 130, 1), ("B", 58_262_669, 130, 1), ("L", 440_302_605, 218, 2), ("H", 1_457_326_221, 306, 3)],
)
def test_presets_match_official_counts_and_keys(preset, params, num_keys, depth):
    network = _meta(preset)
    assert sum(p.numel() for p in network.parameters()) == params
    keys = set(network.state_dict())
    assert len(keys) == num_keys
    assert keys == _official_keys(depth)


def test_base_shapes_match_official():
    shapes = {k: tuple(v.shape) for k, v in _meta("B").state_dict().items()}
    dims = [32, 64, 128, 256, 512, 512]
    assert shapes["conv_blocks_context.0.0.conv1.weight"] == (32, 1, 3, 3, 3)
    assert shapes["conv_blocks_context.0.0.conv3.weight"] == (32, 1, 1, 1, 1)
    assert shapes["conv_blocks_context.5.0.conv3.weight"] == (512, 512, 1, 1, 1)
    for d in range(1, 6):
        assert shapes[f"conv_blocks_context.{d}.0.conv1.weight"] == (dims[d], dims[d - 1], 3, 3, 3)
    for u in range(5):
        assert shapes[f"upsample_layers.{u}.conv.weight"] == (dims[4 - u], dims[5 - u], 1, 1, 1)
        assert shapes[f"conv_blocks_localization.{u}.0.conv1.weight"] == (dims[4 - u], 2 * dims[4 - u], 3, 3, 3)
        assert shapes[f"conv_blocks_localization.{u}.0.conv3.weight"] == (dims[4 - u], 2 * dims[4 - u], 1, 1, 1)
        assert shapes[f"seg_outputs.{u}.weight"] == (105, dims[4 - u], 1, 1, 1)
    assert not any("running" in k for k in shapes)


def _reference_block(sd, prefix, x, stride, has_conv3):
    y = F.conv3d(x, sd[f"{prefix}.conv1.weight"], sd[f"{prefix}.conv1.bias"], stride=stride, padding=1)
    y = F.leaky_relu(F.instance_norm(y, weight=sd[f"{prefix}.norm1.weight"], bias=sd[f"{prefix}.norm1.bias"]), 0.01)
    y = F.conv3d(y, sd[f"{prefix}.conv2.weight"], sd[f"{prefix}.conv2.bias"], padding=1)
    y = F.instance_norm(y, weight=sd[f"{prefix}.norm2.weight"], bias=sd[f"{prefix}.norm2.bias"])
    shortcut = F.conv3d(x, sd[f"{prefix}.conv3.weight"], sd[f"{prefix}.conv3.bias"], stride=stride) if has_conv3 else x
    return F.leaky_relu(y + shortcut, 0.01)


def _reference_forward(sd, x, pools, depth):
    """The official forward written with functional ops from the state_dict alone."""

    def stage(prefix, x, stride):
        for j in range(depth):
            x = _reference_block(sd, f"{prefix}.{j}", x, stride if j == 0 else 1, j == 0)
        return x

    skips = []
    for d in range(6):
        x = stage(f"conv_blocks_context.{d}", x, 1 if d == 0 else pools[d - 1])
        skips.append(x)
    x = skips.pop()
    outputs = []
    for u in range(5):
        up = F.interpolate(x, scale_factor=[float(s) for s in pools[-1 - u]], mode="nearest")
        up = F.conv3d(up, sd[f"upsample_layers.{u}.conv.weight"], sd[f"upsample_layers.{u}.conv.bias"])
        x = stage(f"conv_blocks_localization.{u}", torch.cat([up, skips[-1 - u]], dim=1), 1)
        outputs.append(F.conv3d(x, sd[f"seg_outputs.{u}.weight"], sd[f"seg_outputs.{u}.bias"]))
    return outputs[::-1]


@pytest.mark.parametrize("depth", [1, 2])
def test_forward_equals_functional_reference(depth):
    torch.manual_seed(0)
    pools = [[2, 2, 2], [2, 2, 2], [1, 2, 2], [2, 2, 1], [1, 1, 2]]
    network = stunet.build(2, 3, "tiny", depth=[depth] * 6, pool_op_kernel_sizes=pools).eval()
    # Non-trivial norm affines and biases so every term of the block shows up in the output.
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    x = torch.randn(1, 2, 16, 32, 32)
    sd = network.state_dict()
    expected = _reference_forward(sd, x, pools, depth)
    with torch.no_grad():
        single = network(x)
        network.deep_supervision = True
        outputs = network(x)
    assert single.shape == (1, 3, 16, 32, 32)
    torch.testing.assert_close(single, expected[0], atol=1e-4, rtol=1e-4)
    assert len(outputs) == 5
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert [o.shape[-1] for o in outputs] == [32, 16, 8, 4, 4]  # full resolution first


def test_conv3_only_in_first_block_of_each_stage():
    network = stunet.build(1, 2, "tiny", depth=[3] * 6)
    for stages in (network.conv_blocks_context, network.conv_blocks_localization):
        for stage in stages:
            assert stage[0].conv3 is not None
            assert all(block.conv3 is None for block in stage[1:])


def test_upsample_is_nearest_then_1x1_conv_and_comes_first_in_concat():
    torch.manual_seed(1)
    network = stunet.build(1, 2, "tiny", pool_op_kernel_sizes=[[2, 2, 2]] * 4 + [[1, 1, 1]]).eval()
    seen = {}
    # Decoder step 1 upsamples by [2, 2, 2] (step 0 by the last pool kernel, [1, 1, 1]).
    network.conv_blocks_localization[1].register_forward_pre_hook(lambda m, a: seen.update(cat=a[0]))
    network.upsample_layers[1].register_forward_hook(lambda m, a, out: seen.update(up=(a[0], out)))
    with torch.no_grad():
        network(torch.randn(1, 1, 32, 32, 32))
    low, up = seen["up"]
    nearest = low.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(up, network.upsample_layers[1].conv(nearest))
    assert torch.equal(seen["cat"][:, : up.shape[1]], up)


def test_wrong_lengths_and_unknown_preset_are_refused():
    with pytest.raises(ValueError, match="len\\(depth\\)"):
        stunet.STUNet(1, 2, depth=[1] * 5)
    with pytest.raises(ValueError, match="unknown STU-Net preset 'XL'"):
        stunet.build(1, 2, "XL")


def test_encoder_and_stem_keys_select_the_right_weights():
    keys = list(stunet.build(1, 2, "tiny").state_dict())
    stem = [k for k in keys if k.startswith(stunet.STEM_KEYS)]
    assert stem == [
        "conv_blocks_context.0.0.conv1.weight",
        "conv_blocks_context.0.0.conv1.bias",
        "conv_blocks_context.0.0.conv3.weight",
        "conv_blocks_context.0.0.conv3.bias",
    ]
    encoder = [k for k in keys if k.startswith(stunet.ENCODER_KEYS)]
    assert encoder and all(k.startswith("conv_blocks_context.") for k in encoder)
    assert not any(k.startswith("seg_outputs") for k in encoder)
