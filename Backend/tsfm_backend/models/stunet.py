"""STU-Net: the scalable nnU-Net-style residual U-Net, with the released checkpoints' weight names.

Every parameter name and shape matches the official ``STUNet`` (nnU-Net v1 and v2 trainers), so the
TotalSegmentator checkpoints load with ``load_state_dict(strict=True)`` and no key remapping.

Semantics kept exactly:
- ``BasicResBlock``: conv1 -> InstanceNorm(affine) -> LeakyReLU(0.01) -> conv2 -> InstanceNorm, plus the
  identity, or a strided 1x1x1 ``conv3`` in block 0 of every stage (encoder and decoder, even when the
  channel count does not change), then LeakyReLU.
- Downsampling is the stride of block 0 of encoder stages 1..5; there is no pooling layer.
- Upsampling is weight-free nearest interpolation by the pool kernel, then a 1x1x1 conv.
- The upsampled tensor comes first in the skip concatenation.
- With deep supervision the outputs are ordered full resolution first.

Tensors are (B, C, Z, Y, X) = (B, C, K, J, I); pool kernels are given in the same axis order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NUM_STAGES = 6

PRESETS: dict[str, dict[str, list[int]]] = {
    "tiny": {"depth": [1] * 6, "dims": [4, 8, 8, 16, 16, 16]},
    "S": {"depth": [1] * 6, "dims": [16, 32, 64, 128, 256, 256]},
    "B": {"depth": [1] * 6, "dims": [32, 64, 128, 256, 512, 512]},
    "L": {"depth": [2] * 6, "dims": [64, 128, 256, 512, 1024, 1024]},
    "H": {"depth": [3] * 6, "dims": [96, 192, 384, 768, 1536, 1536]},
}

# The trainer class names of the released checkpoints, mapped to our presets.
TRAINER_PRESETS = {
    "STUNetTrainer_small": "S",
    "STUNetTrainer_base": "B",
    "STUNetTrainer_large": "L",
    "STUNetTrainer_huge": "H",
}

DEFAULT_POOL_KERNELS = [[2, 2, 2]] * (NUM_STAGES - 1)

# The first encoder stage sees the image: the part to adapt for a different number of input channels.
STEM_KEYS = ("conv_blocks_context.0.0.conv1.", "conv_blocks_context.0.0.conv3.")
ENCODER_KEYS = ("conv_blocks_context.",)
HEAD_KEYS = ("seg_outputs.",)


class BasicResBlock(nn.Module):
    """Two 3D convolutions with instance norm and a residual; (B, cin, Z, Y, X) -> (B, cout, Z/s, Y/s, X/s)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        padding: Sequence[int],
        stride: Sequence[int] | int = 1,
        use_1x1conv: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = nn.InstanceNorm3d(out_channels, affine=True)
        self.act1 = nn.LeakyReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.act2 = nn.LeakyReLU(inplace=True)
        self.conv3 = nn.Conv3d(in_channels, out_channels, 1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return self.act2(y + shortcut)


class UpsampleLayerNearest(nn.Module):
    """Nearest-neighbour upsampling by ``scale`` then a 1x1x1 conv (the official ``Upsample_Layer_nearest``)."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)
        self.scale = tuple(float(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


def _stage(
    in_channels: int, out_channels: int, depth: int, kernel: Sequence[int], stride: Sequence[int] | int
) -> nn.Sequential:
    padding = [k // 2 for k in kernel]
    blocks = [BasicResBlock(in_channels, out_channels, kernel, padding, stride=stride, use_1x1conv=True)]
    blocks += [BasicResBlock(out_channels, out_channels, kernel, padding) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class STUNet(nn.Module):
    """STU-Net with the official constructor.

    Args:
        input_channels: image channels C of the (B, C, Z, Y, X) input.
        num_classes: output channels (background included for softmax models).
        depth: residual blocks per stage, 6 entries (the decoder mirrors the encoder).
        dims: channels per stage, 6 entries.
        pool_op_kernel_sizes: 5 downsampling factors (z, y, x); also the upsampling factors.
        conv_kernel_sizes: 6 conv kernels (z, y, x); default 3x3x3 everywhere.
        deep_supervision: return all 5 decoder outputs (full resolution first) instead of one tensor.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        depth: Sequence[int] = (1,) * NUM_STAGES,
        dims: Sequence[int] = (32, 64, 128, 256, 512, 512),
        pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
        conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        pools = [list(p) for p in (pool_op_kernel_sizes or DEFAULT_POOL_KERNELS)]
        kernels = [list(k) for k in (conv_kernel_sizes or [[3, 3, 3]] * NUM_STAGES)]
        if not (len(depth) == len(dims) == len(kernels) == len(pools) + 1):
            raise ValueError(
                f"STU-Net needs len(depth) == len(dims) == len(conv_kernel_sizes) == len(pool_op_kernel_sizes)+1, "
                f"got {len(depth)}, {len(dims)}, {len(kernels)}, {len(pools)}"
            )
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.pool_op_kernel_sizes = pools
        self.deep_supervision = deep_supervision
        num_pool = len(pools)

        self.conv_blocks_context = nn.ModuleList([_stage(input_channels, dims[0], depth[0], kernels[0], 1)])
        for d in range(1, num_pool + 1):
            self.conv_blocks_context.append(_stage(dims[d - 1], dims[d], depth[d], kernels[d], pools[d - 1]))

        self.upsample_layers = nn.ModuleList(
            UpsampleLayerNearest(dims[-1 - u], dims[-2 - u], pools[-1 - u]) for u in range(num_pool)
        )
        self.conv_blocks_localization = nn.ModuleList(
            _stage(2 * dims[-2 - u], dims[-2 - u], depth[-2 - u], kernels[-2 - u], 1) for u in range(num_pool)
        )
        self.seg_outputs = nn.ModuleList(nn.Conv3d(dims[-2 - u], num_classes, 1) for u in range(num_pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """(B, C, Z, Y, X) -> logits (B, num_classes, Z, Y, X); with deep supervision a tuple, full res first.

        Z, Y and X must be divisible by the product of the pool kernels along that axis.
        """
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        outputs = []
        for u, (upsample, stage) in enumerate(zip(self.upsample_layers, self.conv_blocks_localization, strict=True)):
            x = stage(torch.cat((upsample(x), skips[-(u + 1)]), dim=1))
            if self.deep_supervision or u == len(self.conv_blocks_localization) - 1:
                outputs.append(self.seg_outputs[u](x))
        if self.deep_supervision:
            return tuple(reversed(outputs))
        return outputs[-1]


def initialize_he(network: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He``: Kaiming-normal conv weights (a=neg_slope), zero biases."""
    for module in network.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=neg_slope)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build(
    input_channels: int = 1,
    num_classes: int = 2,
    preset: str | None = None,
    **overrides,
) -> STUNet:
    """A STU-Net from a preset name (``tiny``, ``S``, ``B``, ``L``, ``H``) plus explicit constructor kwargs."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown STU-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    network = STUNet(input_channels, num_classes, **kwargs)
    if not any(p.is_meta for p in network.parameters()):
        initialize_he(network)
    return network


def architecture_from_state_dict(state_dict: dict) -> dict:
    """STU-Net constructor kwargs read off the weight shapes: input channels, classes, depth, dims.

    The preset name is added when depth and dims are exactly a preset's. Pool and conv kernels do not
    change any weight shape, so they must come from the plans. Raises ValueError for non-STU-Net keys.
    """
    stages = 0
    while f"conv_blocks_context.{stages}.0.conv1.weight" in state_dict:
        stages += 1
    if stages != NUM_STAGES or "seg_outputs.0.weight" not in state_dict:
        raise ValueError("the weights are not an STU-Net's (no conv_blocks_context.0..5 / seg_outputs keys)")
    dims = [int(state_dict[f"conv_blocks_context.{d}.0.conv1.weight"].shape[0]) for d in range(stages)]
    depth = []
    for d in range(stages):
        blocks = 0
        while f"conv_blocks_context.{d}.{blocks}.conv1.weight" in state_dict:
            blocks += 1
        depth.append(blocks)
    architecture: dict = {
        "input_channels": int(state_dict["conv_blocks_context.0.0.conv1.weight"].shape[1]),
        "num_classes": int(state_dict["seg_outputs.0.weight"].shape[0]),
    }
    preset = next((name for name, p in PRESETS.items() if p["depth"] == depth and p["dims"] == dims), None)
    if preset is not None:
        architecture["preset"] = preset
    else:
        architecture.update(depth=depth, dims=dims)
    return architecture


def trainer_preset(trainer_name: str) -> str | None:
    """The preset of an official trainer name such as ``STUNetTrainer_base_ft`` (``B``), else None."""
    for prefix, preset in TRAINER_PRESETS.items():
        if trainer_name == prefix or trainer_name.startswith(prefix + "_"):
            return preset
    return None
