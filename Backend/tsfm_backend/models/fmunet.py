"""FMUNet (MIS-FM / PyMIC): a residual pre-activation U-Net, the released ``fmunet_abk1k_volf.pt`` model.

Weight names match PyMIC's ``FMUNet``: ``project``, ``encoder.en_conv{0-4}`` / ``encoder.down{0-3}``,
``decoder.upcat{0-3}`` / ``decoder.de_conv{0-4}`` and ``out_layers.{0-3}``. Blocks are InstanceNorm
(affine) + LeakyReLU(0.01) + conv; each conv of a ``ResConv`` has its own residual. Upsampling is a
1x1x1 conv then trilinear interpolation (align_corners=True); the skip comes first in the concat.
``res_mode`` 1 and 2 make the first one or two levels in-plane (1x3x3 convs, 1x2x2 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Conv dimensionality of levels 0 and 1 per res_mode (3: 3x3x3, 2: 1x3x3); deeper levels are 3D.
LEVEL_DIMS = {0: (3, 3), 1: (2, 3), 2: (2, 2)}

PRESETS: dict[str, dict] = {
    "abk1k": {"feature_chns": [32, 64, 128, 256, 512], "dropout": 0.2, "depth": 2, "res_mode": 0},
    "tiny": {"feature_chns": [4, 8, 8, 16, 16], "dropout": 0.0, "depth": 1, "res_mode": 0},
}

STEM_KEYS = ("project.",)
ENCODER_KEYS = ("project.", "encoder.")
HEAD_KEYS = ("out_layers.",)


def _conv(cin: int, cout: int, dim: int, stride: int = 1) -> nn.Conv3d:
    if dim == 3:
        return nn.Conv3d(cin, cout, 3, padding=1, stride=stride)
    return nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), stride=(1, stride, stride))


class ResConv(nn.Module):
    """``depth`` x [IN, LeakyReLU, Dropout, conv] each with its own residual; channels unchanged."""

    def __init__(self, chns: int, dim: int = 3, dropout: float = 0.0, depth: int = 2) -> None:
        super().__init__()
        self.conv_list = nn.ModuleList(
            nn.Sequential(nn.InstanceNorm3d(chns, affine=True), nn.LeakyReLU(), nn.Dropout(dropout), _conv(chns, chns, dim))
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.conv_list:
            x = conv(x) + x
        return x


class DownSample(nn.Module):
    """IN, LeakyReLU, stride-2 conv (1x2x2 for in-plane levels)."""

    def __init__(self, cin: int, cout: int, dim: int = 3) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.InstanceNorm3d(cin, affine=True), nn.LeakyReLU(), _conv(cin, cout, dim, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpCatConv(nn.Module):
    """Coarse map: IN, LeakyReLU, 1x1x1 conv, trilinear x2; concat after the fine map; IN, LeakyReLU, conv."""

    def __init__(self, coarse: int, fine: int, out: int, dim: int = 3) -> None:
        super().__init__()
        scale = (1.0, 2.0, 2.0) if dim == 2 else (2.0, 2.0, 2.0)
        self.up = nn.Sequential(
            nn.InstanceNorm3d(coarse, affine=True), nn.LeakyReLU(), nn.Conv3d(coarse, fine, 1),
            nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=True),
        )
        self.conv = nn.Sequential(nn.InstanceNorm3d(2 * fine, affine=True), nn.LeakyReLU(), _conv(2 * fine, out, dim))

    def forward(self, x_coarse: torch.Tensor, x_fine: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x_fine, self.up(x_coarse)], dim=1))


class Encoder(nn.Module):
    def __init__(self, chns: Sequence[int], res_mode: int, dropout: float, depth: int) -> None:
        super().__init__()
        d0, d1 = LEVEL_DIMS[res_mode]
        dims = (d0, d1, 3, 3, 3)
        drops = (0.0, 0.0, dropout, dropout, dropout)
        for level in range(5):
            setattr(self, f"en_conv{level}", ResConv(chns[level], dims[level], drops[level], depth))
        for level in range(4):
            setattr(self, f"down{level}", DownSample(chns[level], chns[level + 1], dims[level]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.en_conv0(x)]
        for level in range(1, 5):
            down = getattr(self, f"down{level - 1}")
            features.append(getattr(self, f"en_conv{level}")(down(features[-1])))
        return features


class Decoder(nn.Module):
    def __init__(self, chns: Sequence[int], res_mode: int, dropout: float, depth: int) -> None:
        super().__init__()
        d0, d1 = LEVEL_DIMS[res_mode]
        dims = (d0, d1, 3, 3, 3)
        drops = (0.0, 0.0, dropout, dropout, dropout)
        for level in range(4):
            setattr(self, f"upcat{level}", UpCatConv(chns[level + 1], chns[level], chns[level], dims[level]))
        for level in range(5):
            setattr(self, f"de_conv{level}", ResConv(chns[level], dims[level], drops[level], depth))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.de_conv4(features[4])
        outputs = []
        for level in range(3, -1, -1):
            x = getattr(self, f"de_conv{level}")(getattr(self, f"upcat{level}")(x, features[level]))
            outputs.append(x)
        return outputs[::-1]  # full resolution first


class FMUNet(nn.Module):
    """FMUNet: (B, in_chns, Z, Y, X) -> logits (B, class_num, Z, Y, X); sizes divisible by 16 (in-plane
    levels do not halve Z). With ``multiscale_pred`` a tuple of 4 outputs, full resolution first."""

    def __init__(
        self,
        in_chns: int,
        class_num: int,
        feature_chns: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.2,
        depth: int = 2,
        res_mode: int = 0,
        multiscale_pred: bool = False,
    ) -> None:
        super().__init__()
        if res_mode not in LEVEL_DIMS or len(feature_chns) != 5:
            raise ValueError(f"FMUNet needs res_mode 0, 1 or 2 and 5 feature_chns, got {res_mode}, {list(feature_chns)}")
        self.multiscale_pred = multiscale_pred
        d0, d1 = LEVEL_DIMS[res_mode]
        self.project = _conv(in_chns, feature_chns[0], d0)
        self.encoder = Encoder(feature_chns, res_mode, dropout, depth)
        self.decoder = Decoder(feature_chns, res_mode, dropout, depth)
        self.out_layers = nn.ModuleList(
            nn.Sequential(nn.InstanceNorm3d(feature_chns[i], affine=True), nn.LeakyReLU(),
                          _conv(feature_chns[i], class_num, dim))
            for i, dim in enumerate((d0, d1, 3, 3))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv3d) and not module.weight.is_meta:
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                nn.init.zeros_(module.bias)

    @property
    def deep_supervision(self) -> bool:
        return self.multiscale_pred

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.multiscale_pred = value

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        decoded = self.decoder(self.encoder(self.project(x)))
        if not self.multiscale_pred:
            return self.out_layers[0](decoded[0])
        return tuple(layer(feature) for layer, feature in zip(self.out_layers, decoded, strict=True))


def build(in_chns: int = 1, class_num: int = 2, preset: str | None = None, **overrides) -> FMUNet:
    """An FMUNet from a preset (``abk1k``: the released model's configuration, ``tiny``) plus kwargs."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown FMUNet preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    return FMUNet(in_chns, class_num, **kwargs)
