"""TSFM: a residual-CNN U-Net with a 12-layer Vision-Transformer bottleneck (our own implementation).

Design from the TSFM paper's description (no code or weights were released):
- Encoder and decoder are pre-activation residual blocks (InstanceNorm, LeakyReLU, 3x3x3 conv, twice,
  plus the identity or a 1x1x1 projection). Each downsampling stage starts with a stride-2 residual block
  that doubles the channels.
- The lowest resolution goes through a ViT bottleneck: a 1x1x1 projection to ``embed_dim`` tokens,
  a depthwise-conv position encoding (so any patch size works), ``vit_depth`` pre-norm transformer
  layers, and a projection back, added to the CNN features.
- Upsampling is weight-free trilinear interpolation by 2 followed by a 1x1x1 conv halving the channels
  (as in STU-Net, so weights transfer across strides); the upsampled tensor comes first in the concat.
- One 1x1x1 head per decoder level; outputs are per-class logits (the model is trained with sigmoid
  BCE + Dice on partially labelled datasets).

Tensors are (B, C, Z, Y, X); each spatial size must be divisible by 2 ** (len(dims) - 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PRESETS: dict[str, dict] = {
    "tiny": {"dims": [8, 16, 32, 32], "depth": [1, 1, 1, 1], "embed_dim": 32, "vit_depth": 2, "num_heads": 2},
    "small": {"dims": [32, 64, 128, 256, 320], "depth": [1, 1, 2, 2, 2], "embed_dim": 384, "vit_depth": 12,
              "num_heads": 6},
    "base": {"dims": [32, 64, 128, 256, 512], "depth": [2, 2, 2, 2, 2], "embed_dim": 768, "vit_depth": 12,
             "num_heads": 12},
    "large": {"dims": [64, 128, 256, 512, 1024], "depth": [2, 2, 2, 2, 2], "embed_dim": 768, "vit_depth": 12,
              "num_heads": 12},
    # The paper's 1.6B-parameter model (1,608,444,146 parameters with one input and ten classes):
    # a ViT-Base bottleneck at 1/32 resolution on a wide, deep residual CNN.
    "paper": {"dims": [96, 192, 384, 768, 1536, 1536], "depth": [3, 3, 3, 4, 3, 3], "embed_dim": 768,
              "vit_depth": 12, "num_heads": 12},
}

STEM_KEYS = ("stem.",)
ENCODER_KEYS = ("stem.", "encoder.", "bottleneck.")
BOTTLENECK_KEYS = ("bottleneck.",)
HEAD_KEYS = ("heads.",)


class ResBlock(nn.Module):
    """Pre-activation residual block: (B, cin, Z, Y, X) -> (B, cout, Z/stride, Y/stride, X/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.InstanceNorm3d(in_channels, affine=True)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1, stride=stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.leaky_relu(self.norm1(x), 0.01))
        y = self.conv2(F.leaky_relu(self.norm2(y), 0.01))
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class TransformerLayer(nn.Module):
    """Pre-norm ViT layer on (B, N, D) tokens: multi-head self-attention then a GELU MLP (ratio 4)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attention.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTBottleneck(nn.Module):
    """(B, C, z, y, x) -> (B, C, z, y, x): tokens through ``depth`` transformer layers, added back."""

    def __init__(self, channels: int, embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv3d(channels, embed_dim, 1)
        self.pos_conv = nn.Conv3d(embed_dim, embed_dim, 3, padding=1, groups=embed_dim)
        self.layers = nn.ModuleList(TransformerLayer(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_out = nn.Conv3d(embed_dim, channels, 1)
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj_in(x)
        tokens = tokens + self.pos_conv(tokens)
        b, d, z, y, w = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                tokens = checkpoint(layer, tokens, use_reentrant=False)
            else:
                tokens = layer(tokens)
        tokens = self.norm(tokens).transpose(1, 2).reshape(b, d, z, y, w)
        return x + self.proj_out(tokens)


class UpsampleInterp(nn.Module):
    """Trilinear x2 interpolation then a 1x1x1 conv: (B, cin, z, y, x) -> (B, cout, 2z, 2y, 2x)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False))


def _stage(in_channels: int, out_channels: int, depth: int, stride: int) -> nn.Sequential:
    blocks = [ResBlock(in_channels, out_channels, stride)]
    blocks += [ResBlock(out_channels, out_channels) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class TSFM(nn.Module):
    """The TSFM network.

    Args:
        in_channels: image channels.
        num_classes: output channels (one logit per class; sigmoid at inference).
        dims: channels per resolution level, finest first; ``len(dims) - 1`` stride-2 downsamplings.
        depth: residual blocks per level (encoder; the decoder uses the same count).
        embed_dim, vit_depth, num_heads: the transformer bottleneck.
        deep_supervision: return one output per decoder level, full resolution first.
        activation_checkpointing: recompute stage and transformer activations in the backward pass
            (training only) to trade compute for memory.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: Sequence[int],
        depth: Sequence[int],
        embed_dim: int = 768,
        vit_depth: int = 12,
        num_heads: int = 12,
        deep_supervision: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(dims) != len(depth) or len(dims) < 2:
            raise ValueError(f"TSFM needs len(dims) == len(depth) >= 2, got {len(dims)} and {len(depth)}")
        self.deep_supervision = deep_supervision
        self.stem = nn.Conv3d(in_channels, dims[0], 3, padding=1)
        self.encoder = nn.ModuleList([_stage(dims[0], dims[0], depth[0], 1)])
        self.encoder.extend(_stage(dims[s - 1], dims[s], depth[s], 2) for s in range(1, len(dims)))
        self.bottleneck = ViTBottleneck(dims[-1], embed_dim, vit_depth, num_heads)
        levels = range(len(dims) - 2, -1, -1)
        self.upsample = nn.ModuleList(UpsampleInterp(dims[s + 1], dims[s]) for s in levels)
        self.decoder = nn.ModuleList(_stage(2 * dims[s], dims[s], depth[s], 1) for s in levels)
        self.heads = nn.ModuleList(nn.Conv3d(dims[s], num_classes, 1) for s in levels)
        self.set_activation_checkpointing(activation_checkpointing)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled
        self.bottleneck.activation_checkpointing = enabled

    def _run(self, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training:
            return checkpoint(module, *inputs, use_reentrant=False)
        return module(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """(B, C, Z, Y, X) -> logits (B, num_classes, Z, Y, X), or a tuple full resolution first."""
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = self._run(stage, x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        outputs = []
        last = len(self.decoder) - 1
        for u, (upsample, stage, head) in enumerate(zip(self.upsample, self.decoder, self.heads, strict=True)):
            x = self._run(stage, torch.cat((upsample(x), skips[-1 - u]), dim=1))
            if self.deep_supervision or u == last:
                outputs.append(head(x))
        if self.deep_supervision:
            return tuple(reversed(outputs))
        return outputs[-1]


def build(in_channels: int = 1, num_classes: int = 1, preset: str | None = None, **overrides) -> TSFM:
    """A TSFM from a preset (``tiny``, ``small``, ``base``, ``large``, ``paper``) plus explicit kwargs."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown TSFM preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    return TSFM(in_channels, num_classes, **kwargs)
