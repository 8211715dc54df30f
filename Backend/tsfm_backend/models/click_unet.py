"""Click-conditioned U-Net: a STU-Net that takes the user's prompts as extra input channels.

The network is class-agnostic: it segments whatever object the prompts point at. Its input is the
image followed by four prompt channels, in this order (see ``PROMPT_CHANNELS``):

- ``positive``: balls at the positive clicks (1 inside, 0 outside);
- ``negative``: balls at the negative clicks;
- ``box``: the filled 3D box prompts;
- ``previous``: the mask the session holds before this interaction (0/1).

and it returns one logit channel (``sigmoid`` output): the object's mask. This is the DeepEdit /
nnInteractive recipe on our own backbone. Weight names are STU-Net's (the class only adds attributes),
so STU-Net encoders can initialise it and fine-tuning tools find the same ``ENCODER_KEYS``.

``encode_prompts`` is the one place where prompts become channels; the interactive session and the
training simulation both call it, so the two can never drift apart. Tensors are (B, C, Z, Y, X) =
(B, C, K, J, I) on the model's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tsfm_backend.models.stunet import ENCODER_KEYS, HEAD_KEYS, STEM_KEYS, STUNet, initialize_he

__all__ = [
    "ENCODER_KEYS",
    "HEAD_KEYS",
    "PRESETS",
    "PROMPT_CHANNELS",
    "STEM_KEYS",
    "ClickUNet",
    "build",
    "encode_prompts",
]

PROMPT_CHANNELS = ("positive", "negative", "box", "previous")

# The first pool halves only the in-plane axes, so a (3, 2, 2) mm grid becomes about isotropic.
ANISOTROPIC_POOLS = [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]

PRESETS: dict[str, dict] = {
    # About 3.6 M parameters: about a second per 48x96x96 click on two CPU cores.
    "small": {"depth": [1] * 6, "dims": [8, 16, 32, 64, 128, 128], "pool_op_kernel_sizes": ANISOTROPIC_POOLS},
    # For tests: a few thousand parameters.
    "tiny": {"depth": [1] * 6, "dims": [4, 4, 8, 8, 16, 16], "pool_op_kernel_sizes": ANISOTROPIC_POOLS},
}


class ClickUNet(STUNet):
    """STU-Net over ``image_channels + 4`` input channels with one sigmoid output channel.

    Args:
        image_channels: image channels before the prompt channels (1 for CT).
        click_radius_mm: radius of the ball drawn at each click, in mm.
        depth, dims, pool_op_kernel_sizes, conv_kernel_sizes: as for ``STUNet``.
    """

    def __init__(
        self,
        image_channels: int = 1,
        click_radius_mm: float = 5.0,
        depth: Sequence[int] = (1,) * 6,
        dims: Sequence[int] = (8, 16, 32, 64, 128, 128),
        pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
        conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if image_channels < 1:
            raise ValueError(f"image_channels must be at least 1, got {image_channels}")
        if click_radius_mm <= 0:
            raise ValueError(f"click_radius_mm must be positive, got {click_radius_mm}")
        super().__init__(
            image_channels + len(PROMPT_CHANNELS), 1, depth=depth, dims=dims,
            pool_op_kernel_sizes=pool_op_kernel_sizes or ANISOTROPIC_POOLS,
            conv_kernel_sizes=conv_kernel_sizes, deep_supervision=False,
        )
        self.image_channels = image_channels
        self.click_radius_mm = float(click_radius_mm)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Input (Z, Y, X) sizes must be multiples of this: the product of the pool kernels per axis."""
        size = [1, 1, 1]
        for kernel in self.pool_op_kernel_sizes:
            size = [s * int(k) for s, k in zip(size, kernel, strict=True)]
        return (size[0], size[1], size[2])


def build(preset: str | None = "small", **overrides) -> ClickUNet:
    """A ClickUNet from a preset (``small``, ``tiny``) plus explicit constructor kwargs."""
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown click_unet preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    network = ClickUNet(**kwargs)
    if not any(p.is_meta for p in network.parameters()):
        initialize_he(network)
    return network


def _balls(
    shape: tuple[int, int, int], points: torch.Tensor, radius_vox: tuple[float, float, float]
) -> torch.Tensor:
    """(Z, Y, X) float map, 1 within the ellipsoid of ``radius_vox`` around each (k, j, i) point, else 0."""
    out = torch.zeros(shape, dtype=torch.float32, device=points.device)
    if points.numel() == 0:
        return out
    reach = [max(1, int(r + 0.5)) for r in radius_vox]
    offsets = torch.stack(torch.meshgrid(
        *[torch.arange(-n, n + 1, device=points.device) for n in reach], indexing="ij"), dim=-1).reshape(-1, 3)
    scaled = offsets.float() / torch.tensor([max(r, 0.5) for r in radius_vox], device=points.device)
    offsets = offsets[(scaled ** 2).sum(-1) <= 1.0]
    voxels = (points.round().long()[:, None, :] + offsets[None]).reshape(-1, 3)
    limits = torch.tensor(shape, device=points.device)
    voxels = voxels[((voxels >= 0) & (voxels < limits)).all(-1)]
    out[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = 1.0
    return out


def encode_prompts(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    click_radius_mm: float,
    positive: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """The four prompt channels on a (Z, Y, X) grid of ``spacing`` mm (K, J, I order).

    Args:
        positive, negative: (N, 3) float (k, j, i) grid coordinates (may be fractional or outside).
        boxes: (M, 2, 3) inclusive corner coordinates ((k0, j0, i0), (k1, j1, i1)), clipped to the grid.
        previous: (Z, Y, X) mask, thresholded at 0.5.
    Returns:
        (4, Z, Y, X) float32 in ``PROMPT_CHANNELS`` order.
    """
    device = previous.device if previous is not None else torch.device("cpu")
    radius = tuple(click_radius_mm / s for s in spacing)
    empty = torch.zeros((0, 3), device=device)
    pos = _balls(shape, positive if positive is not None else empty, radius)
    neg = _balls(shape, negative if negative is not None else empty, radius)
    box = torch.zeros(shape, dtype=torch.float32, device=device)
    if boxes is not None:
        for corners in boxes.reshape(-1, 2, 3):
            low = torch.clamp(torch.minimum(corners[0], corners[1]).round().long(), min=0)
            high = torch.maximum(corners[0], corners[1]).round().long()
            high = torch.minimum(high, torch.tensor(shape, device=high.device) - 1)
            if bool((high >= low).all()):
                box[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1] = 1.0
    prev = (previous > 0.5).float() if previous is not None else torch.zeros(shape, device=device)
    return torch.stack([pos, neg, box, prev])
