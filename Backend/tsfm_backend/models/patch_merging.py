"""SwinUNETR's patch merging in either order MONAI has used, chosen by the model card, not by the installed MONAI.

MONAI's ``PatchMerging`` (SwinUNETR's default ``downsample="merging"``) turns every 2x2x2 block of tokens
(B, D, H, W, C) into one token by concatenating eight strided slices ``x[:, d::2, h::2, w::2, :]`` along
the channels, then LayerNorm(8C) and a linear reduction 8C -> 2C. The order of the slices decides which
columns of the trained ``norm`` and ``reduction`` weights meet which voxel of the block, and MONAI 1.5.0
changed it (``monai/networks/nets/swin_unetr.py``, "Fix PatchMerging duplicate merging", #8285):

    slice                     x0   x1   x2   x3   x4   x5   x6   x7     offsets (d, h, w)
    MONAI 0.9.0 ... 1.4.x     000  100  010  001  101  010  001  111    010 and 001 twice, 110 and 011 never
    MONAI 1.5.0 and later     000  100  010  001  110  101  011  111    each offset once

The same weights therefore compute another network under each order. SuPreM trained its SwinUNETR with
a copy of MONAI 0.9.0's (``patch_merging: "monai<1.5"`` in the cards its importer writes); networks made
with a current MONAI use ``"monai>=1.5"``, the default. Both orders are spelled out here, so a model
computes the same thing whichever MONAI (``monai>=1.3``) is installed.

Odd sizes are padded at the end of each axis, as current MONAI does (MONAI 0.9.0 padded the wrong axes);
SwinUNETR only takes sizes divisible by 32, so no padding happens there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Offsets = tuple[tuple[int, int, int], ...]

# The (d, h, w) offset of each concatenated slice, in concatenation order.
MONAI_BEFORE_1_5: Offsets = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))
MONAI_FROM_1_5: Offsets = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
LEGACY = "monai<1.5"
CURRENT = "monai>=1.5"


class OrderedPatchMerging(nn.Module):
    """3D patch merging with the slice order ``offsets`` (a subclass sets it).

    Built as SwinUNETR builds its ``downsample`` (``dim``, ``norm_layer``, ``spatial_dims`` keywords), with
    MONAI's weight names and shapes: ``norm`` (LayerNorm(8 * dim)) and ``reduction`` (8 * dim -> 2 * dim).
    """

    offsets: Offsets = MONAI_FROM_1_5

    def __init__(self, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm, spatial_dims: int = 3) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"this patch merging is for 3D SwinUNETR, not {spatial_dims}D")
        self.dim = dim
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"patch merging takes (B, D, H, W, C) tokens, got shape {tuple(x.shape)}")
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, a::2, b::2, c::2, :] for a, b, c in self.offsets], dim=-1)
        return self.reduction(self.norm(x))


class PatchMergingBefore15(OrderedPatchMerging):
    """MONAI 0.9.0 to 1.4.x: offsets 010 and 001 taken twice, 110 and 011 left out."""

    offsets = MONAI_BEFORE_1_5


class PatchMergingFrom15(OrderedPatchMerging):
    """MONAI 1.5.0 and later: each of the eight offsets once."""

    offsets = MONAI_FROM_1_5


CLASSES: dict[str, type[nn.Module]] = {LEGACY: PatchMergingBefore15, CURRENT: PatchMergingFrom15}


def merging_class(order: str) -> type[nn.Module]:
    """The ``downsample`` class for SwinUNETR of one ``patch_merging`` value of a card."""
    if order not in CLASSES:
        raise ValueError(f"unknown patch_merging {order!r}; choose {LEGACY!r} (MONAI 0.9 to 1.4, SuPreM's "
                         f"release) or {CURRENT!r}")
    return CLASSES[order]
