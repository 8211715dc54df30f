"""Interactive-session helpers: a predictable stand-in network and synthetic CT volumes.

The stand-in replaces only the learned part (the network). Everything around it (ROI placement and
growth, resampling, prompt encoding, bookkeeping, undo) stays the real session code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tsfm_backend.model_card import ModelCard
from tsfm_backend.volume import Volume


class PromptEcho(torch.nn.Module):
    """Click-conditioned stand-in: the mask is the previous mask plus balls around positive clicks and
    box maps, minus balls around negative clicks. With ``bright`` it instead segments every voxel
    brighter than the middle of the window (to test ROI growth on a large object)."""

    def __init__(self, bright: bool = False) -> None:
        super().__init__()
        self.bright = bright
        self.divisor = (4, 4, 4)
        self.click_radius_mm = 2.0
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[2:]))
        if self.bright:
            return 20.0 * (x[:, 0:1] - 0.5)
        grow = lambda c: F.max_pool3d(c, 5, stride=1, padding=2)  # noqa: E731
        positive, negative, box, previous = (x[:, i:i + 1] for i in range(1, 5))
        keep = torch.clamp(grow(positive) + box + previous, max=1.0) - 2.0 * grow(negative)
        return 20.0 * (keep - 0.5)


def standin_card(patch_size: tuple[int, int, int] = (16, 32, 32)) -> ModelCard:
    return ModelCard(
        id="prompt-echo", family="click_unet", architecture={"preset": "tiny"}, kind="promptable",
        classes={1: "object"}, spacing=(2.0, 2.0, 2.0),
        normalization={"scheme": "hu_window", "lower": -100.0, "upper": 300.0},
        patch_size=patch_size, output="sigmoid",
    )


def ellipsoid_volume(shape=(40, 96, 96), centre=(20, 48, 48), radii_mm=(20.0, 30.0, 30.0),
                     spacing_kji=(2.0, 1.0, 1.0)) -> tuple[Volume, np.ndarray]:
    """A CT-like volume: soft tissue (40 HU) with a bright (200 HU) ellipsoid; returns (volume, ellipsoid)."""
    grid = np.indices(shape).astype(float)
    distance = sum(((grid[a] - centre[a]) * spacing_kji[a] / radii_mm[a]) ** 2 for a in range(3))
    inside = distance <= 1.0
    array = np.where(inside, 200.0, 40.0).astype(np.float32)
    spacing_ijk = (spacing_kji[2], spacing_kji[1], spacing_kji[0])
    return Volume(array, spacing=spacing_ijk), inside

