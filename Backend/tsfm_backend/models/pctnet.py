"""PCT-Net (MIS-FM): a CNN patch embedding, a pyramid of parallel conv + Swin blocks, a CNN head.

Weight names match the released ``pctnet_ct10k_volf.pt`` (``model_state_dict``): all three
resolution-mode branches of ``embeddings`` and ``pred_heads`` exist, only ``resolution_mode``'s runs.
The Swin layers are built for one token grid, so the network accepts exactly ``input_size`` voxels
(Z, Y, X); sliding windows must use that patch. Blocks are pre-activation (BatchNorm, PReLU, conv).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tsfm_backend.models.swin3d import SwinLayer

# Per resolution mode: downsampling of the embedding (z, y, x) and its (conv, down) dims per level.
RESOLUTION_SCALES = {0: (4, 4, 4), 1: (2, 4, 4), 2: (1, 4, 4)}
BRANCH_DIMS = ((3, 3), (2, 3), (2, 2))

PRESETS: dict[str, dict] = {
    "ct10k": {"feature_chns": [24, 48, 128, 256, 512], "input_size": [64, 128, 128], "resolution_mode": 1},
    "default": {"feature_chns": [32, 64, 128, 256, 512], "input_size": [64, 128, 128], "resolution_mode": 0},
    "tiny": {"feature_chns": [4, 8, 16, 16, 32], "input_size": [16, 32, 32], "resolution_mode": 1,
             "num_heads": [2, 2, 4], "window_sizes": [2, 2, 2]},
}

STEM_KEYS = ("embeddings.0.proj.", "embeddings.1.proj.", "embeddings.2.proj.")
ENCODER_KEYS = ("embeddings.", "pyramid_ct.down", "pyramid_ct.convtrans_e")
HEAD_KEYS = tuple(f"pred_heads.{i}.out_conv" for i in range(3)) + ("pyramid_ct.out_conv",)


def _kernel(dim: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(kernel, padding) of a 3x3x3 conv (dim 3) or an in-plane 1x3x3 conv (dim 2)."""
    return ((3, 3, 3), (1, 1, 1)) if dim == 3 else ((1, 3, 3), (0, 1, 1))


def _bn_prelu_conv(cin: int, cout: int, kernel, padding) -> list[nn.Module]:
    return [nn.BatchNorm3d(cin), nn.PReLU(), nn.Conv3d(cin, cout, kernel, padding=padding)]


class ConvBlock(nn.Module):
    """Two pre-activation convs (no residual): keys ``conv_conv.{0,1,2,3,4,6}``."""

    def __init__(self, cin: int, cout: int, dim: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        kernel, padding = _kernel(dim)
        layers = _bn_prelu_conv(cin, cout, kernel, padding)
        layers += [nn.BatchNorm3d(cout), nn.PReLU(), nn.Dropout(dropout), nn.Conv3d(cout, cout, kernel, padding=padding)]
        self.conv_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class DownSample(nn.Module):
    """Max-pool by 2 (or 1x2x2) then BN, PReLU, conv."""

    def __init__(self, cin: int, cout: int, down_dim: int = 3, conv_dim: int = 3) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d((1, 2, 2) if down_dim == 2 else 2)
        self.conv = nn.Sequential(*_bn_prelu_conv(cin, cout, *_kernel(conv_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class UpCatBlock(nn.Module):
    """Transposed-conv upsampling of the coarse map, concat after the fine one, then BN, PReLU, conv."""

    def __init__(self, fine: int, coarse: int, up_dim: int = 3, conv_dim: int = 3) -> None:
        super().__init__()
        step = (1, 2, 2) if up_dim == 2 else (2, 2, 2)
        self.up = nn.Sequential(nn.BatchNorm3d(coarse), nn.PReLU(), nn.ConvTranspose3d(coarse, fine, step, stride=step))
        self.conv = nn.Sequential(*_bn_prelu_conv(2 * fine, fine, *_kernel(conv_dim)))

    def forward(self, x_fine: torch.Tensor, x_coarse: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x_fine, self.up(x_coarse)], dim=1))


class ConvLayer(nn.Module):
    """BN, PReLU, 1x1x1 conv: the output heads."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_bn_prelu_conv(cin, cout, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvTransBlock(nn.Module):
    """The parallel block: ``ConvBlock(x) + SwinLayer(x)`` on one fixed grid."""

    def __init__(self, chns: int, resolution: Sequence[int], depth: int, num_heads: int, window: int,
                 dropout: float, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self.conv = ConvBlock(chns, chns, 3, dropout)
        self.trans = SwinLayer(chns, resolution, depth, num_heads, window, drop=dropout, attn_drop=dropout,
                               drop_path_rate=drop_path_rate)
        self.norm_layer = nn.LayerNorm(chns)  # present in the released weights, unused in the forward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = x.shape
        tokens = self.trans(x.flatten(2).transpose(1, 2))
        return self.conv(x) + tokens.transpose(1, 2).reshape(b, c, s, h, w)


class PatchEmbedding(nn.Module):
    def __init__(self, in_chns: int, chns: Sequence[int], dims: Sequence[int], dropout: Sequence[float]) -> None:
        super().__init__()
        kernel, padding = _kernel(dims[0])
        self.proj = nn.Conv3d(in_chns, chns[0], kernel, padding=padding)
        self.conv0 = ConvBlock(chns[0], chns[0], dims[0], dropout[0])
        self.conv1 = ConvBlock(chns[1], chns[1], dims[1], dropout[1])
        self.down1 = DownSample(chns[0], chns[1], dims[0], dims[1])
        self.down2 = DownSample(chns[1], chns[2], dims[1], 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = self.conv0(self.proj(x))
        x1 = self.conv1(self.down1(x0))
        return x0, x1, self.down2(x1)


class PyramidConvTrans(nn.Module):
    def __init__(self, grid: Sequence[int], chns: Sequence[int], dropout: Sequence[float], depths: Sequence[int],
                 num_heads: Sequence[int], windows: Sequence[int], class_num: int) -> None:
        super().__init__()
        grids = [list(grid), [g // 2 for g in grid], [g // 4 for g in grid]]
        self.down3 = DownSample(chns[0], chns[1])
        self.down4 = DownSample(chns[1], chns[2])
        self.up3 = UpCatBlock(chns[0], chns[1])
        self.up4 = UpCatBlock(chns[1], chns[2])

        def block(level: int) -> ConvTransBlock:
            return ConvTransBlock(chns[level], grids[level], depths[level], num_heads[level], windows[level],
                                  dropout[level])

        self.convtrans_e2, self.convtrans_d2 = block(0), block(0)
        self.convtrans_e3, self.convtrans_d3 = block(1), block(1)
        self.convtrans_e4 = block(2)
        self.out_conv2 = ConvLayer(chns[0], class_num)
        self.out_conv3 = ConvLayer(chns[1], class_num)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = self.convtrans_e2(x)
        x3 = self.convtrans_e3(self.down3(x2))
        x4 = self.convtrans_e4(self.down4(x3))
        d3 = self.convtrans_d3(self.up4(x3, x4))
        return self.convtrans_d2(self.up3(x2, d3)), d3


class PredictionHead(nn.Module):
    def __init__(self, chns: Sequence[int], dims: Sequence[int], dropout: Sequence[float], class_num: int) -> None:
        super().__init__()
        self.up1 = UpCatBlock(chns[0], chns[1], dims[0], dims[0])
        self.up2 = UpCatBlock(chns[1], chns[2], dims[1], dims[1])
        self.conv0 = ConvBlock(chns[0], chns[0], dims[0], dropout[0])
        self.conv1 = ConvBlock(chns[1], chns[1], dims[1], dropout[1])
        self.out_conv0 = ConvLayer(chns[0], class_num)
        self.out_conv1 = ConvLayer(chns[1], class_num)


class PCTNet(nn.Module):
    """PCT-Net. Input (B, in_chns, *input_size); output logits (B, class_num, *input_size), or with
    ``multiscale_pred`` a tuple of 4 outputs, full resolution first."""

    def __init__(
        self,
        in_chns: int,
        class_num: int,
        input_size: Sequence[int],
        feature_chns: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: Sequence[float] = (0, 0, 0.2, 0.2, 0.2),
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 16),
        window_sizes: Sequence[int] = (6, 6, 6),
        resolution_mode: int = 0,
        multiscale_pred: bool = False,
    ) -> None:
        super().__init__()
        if resolution_mode not in RESOLUTION_SCALES:
            raise ValueError(f"resolution_mode must be 0, 1 or 2, got {resolution_mode}")
        self.input_size = tuple(int(s) for s in input_size)
        self.resolution_mode = resolution_mode
        self.multiscale_pred = multiscale_pred
        scale = RESOLUTION_SCALES[resolution_mode]
        grid = [size // s for size, s in zip(self.input_size, scale, strict=True)]
        chns, drops = list(feature_chns), list(dropout)
        self.embeddings = nn.ModuleList(PatchEmbedding(in_chns, chns[:3], dims, drops[:3]) for dims in BRANCH_DIMS)
        self.pyramid_ct = PyramidConvTrans(grid, chns[2:], drops[2:], depths, num_heads, window_sizes, class_num)
        self.pred_heads = nn.ModuleList(PredictionHead(chns[:3], dims, drops[:3], class_num) for dims in BRANCH_DIMS)

    @property
    def deep_supervision(self) -> bool:
        return self.multiscale_pred

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.multiscale_pred = value

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"PCT-Net was built for {self.input_size} patches (Z, Y, X), got {tuple(x.shape[2:])}")
        x0, x1, x2 = self.embeddings[self.resolution_mode](x)
        d2, d3 = self.pyramid_ct(x2)
        head = self.pred_heads[self.resolution_mode]
        d1 = head.conv1(head.up2(x1, d2))
        d0 = head.conv0(head.up1(x0, d1))
        output = head.out_conv0(d0)
        if not self.multiscale_pred:
            return output
        return output, head.out_conv1(d1), self.pyramid_ct.out_conv2(d2), self.pyramid_ct.out_conv3(d3)


def build(in_chns: int = 1, class_num: int = 2, preset: str | None = None, **overrides) -> PCTNet:
    """A PCT-Net from a preset (``ct10k``: the released model's configuration, ``default``, ``tiny``)."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown PCT-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    if "input_size" not in kwargs:
        raise ValueError("PCT-Net needs input_size (the fixed patch, Z, Y, X)")
    return PCTNet(in_chns, class_num, **kwargs)
