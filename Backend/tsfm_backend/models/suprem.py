"""SuPreM backbones: UNet3D (Models-Genesis style), SwinUNETR and SegResNet, with the released key names.

- ``unet``: ``down_tr64/128/256/512`` and ``up_tr256/128/64`` of two conv + ContBatchNorm3d + ReLU units
  each, transposed-conv upsampling (upsampled tensor first in the concat), head ``out_tr.final_conv``.
  ContBatchNorm3d normalises with the statistics of the current batch even in eval mode, as the authors'
  network does; in eval mode it leaves the running statistics untouched.
- ``swinunetr``: MONAI ``SwinUNETR(feature_size=48)``; ``segresnet``: MONAI ``SegResNet(init_filters=16,
  blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))``. Their keys are MONAI's, which the checkpoints use.

All take (B, C, Z, Y, X) with sizes divisible by 8 (unet, segresnet) or 32 (swinunetr).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("unet", "swinunetr", "segresnet")

PRESETS: dict[str, dict] = {
    "unet": {"backbone": "unet"},
    "swinunetr": {"backbone": "swinunetr", "feature_size": 48},
    "segresnet": {"backbone": "segresnet", "init_filters": 16},
    "tiny-swinunetr": {"backbone": "swinunetr", "feature_size": 12, "depths": (1, 1, 1, 1)},
}

# Per backbone: the head that a task replaces (absent from backbone-only checkpoints).
HEAD_KEYS = {"unet": ("out_tr.",), "swinunetr": ("out.",), "segresnet": ("conv_final.2.",)}
ENCODER_KEYS = ("down_tr", "swinViT.", "encoder", "convInit.", "down_layers.")
STEM_KEYS = ("down_tr64.ops.0.conv1.", "swinViT.patch_embed.", "convInit.")


class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
    """Batch norm that always uses the current batch's statistics (running stats only updated in training)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected a 5D (B, C, Z, Y, X) input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        running_mean = self.running_mean if self.training else None
        running_var = self.running_var if self.training else None
        return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, True, self.momentum, self.eps)


class LUConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = ContBatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class DownTransition(nn.Module):
    """Two LUConvs (cin -> 32*2^d -> 64*2^d), then max-pool except at the deepest level."""

    def __init__(self, cin: int, depth: int) -> None:
        super().__init__()
        width = 32 * 2**depth
        self.ops = nn.Sequential(LUConv(cin, width), LUConv(width, 2 * width))
        self.pool = depth != 3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return (F.max_pool3d(skip, 2) if self.pool else skip), skip


class UpTransition(nn.Module):
    """Transposed conv x2, concat (upsampled first) with the skip, then two LUConvs to 64*2^d channels."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        width = 64 * 2**depth
        self.up_conv = nn.ConvTranspose3d(channels, channels, 2, stride=2)
        self.ops = nn.Sequential(LUConv(channels + channels // 2, width), LUConv(width, width))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class OutputTransition(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class UNet3D(nn.Module):
    """SuPreM's UNet3D: (B, in_channels, Z, Y, X) -> logits (B, num_classes, Z, Y, X)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.down_tr64 = DownTransition(in_channels, 0)
        self.down_tr128 = DownTransition(64, 1)
        self.down_tr256 = DownTransition(128, 2)
        self.down_tr512 = DownTransition(256, 3)
        self.up_tr256 = UpTransition(512, 2)
        self.up_tr128 = UpTransition(256, 1)
        self.up_tr64 = UpTransition(128, 0)
        self.out_tr = OutputTransition(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        return self.out_tr(self.up_tr64(x, skip64))


def build(
    backbone: str = "unet",
    in_channels: int = 1,
    num_classes: int = 2,
    preset: str | None = None,
    **overrides,
) -> nn.Module:
    """A SuPreM backbone network with a ``num_classes`` head; ``preset`` names a row of PRESETS."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown SuPreM preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
        backbone = kwargs.pop("backbone")
    kwargs.update(overrides)
    if backbone == "unet":
        return UNet3D(in_channels, num_classes, **kwargs)
    if backbone == "swinunetr":
        from monai.networks.nets import SwinUNETR

        kwargs.setdefault("feature_size", 48)
        return SwinUNETR(in_channels=in_channels, out_channels=num_classes, **kwargs)
    if backbone == "segresnet":
        from monai.networks.nets import SegResNet

        kwargs.setdefault("init_filters", 16)
        return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
                         blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), **kwargs)
    raise ValueError(f"unknown SuPreM backbone {backbone!r}; choose one of {BACKBONES}")


def head_keys(backbone: str) -> tuple[str, ...]:
    return HEAD_KEYS[backbone]
