"""Tiny random STU-Nets saved in the backend's own format, for tests that need a real model quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsfm_backend.model_card import ModelCard


def pool_kernels_for(patch_size: tuple[int, int, int], stages: int = 5) -> list[list[int]]:
    """STU-Net pool kernels that halve each axis while it stays at least 2 voxels, else keep it."""
    size = list(patch_size)
    kernels = []
    for _ in range(stages):
        kernel = [2 if s % 2 == 0 and s // 2 >= 2 else 1 for s in size]
        size = [s // k for s, k in zip(size, kernel, strict=True)]
        kernels.append(kernel)
    return kernels


def tiny_card(
    *,
    model_id: str = "tiny-stunet",
    classes: dict[int, str] | None = None,
    patch_size: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] | None = (3.0, 1.0, 1.0),
    normalization: dict[str, Any] | None = None,
    in_channels: int = 1,
) -> ModelCard:
    """The card of a tiny STU-Net (``tiny`` preset) with the given classes, patch and preprocessing."""
    classes = {1: "tumour"} if classes is None else classes
    return ModelCard(
        id=model_id,
        family="stunet",
        architecture={
            "preset": "tiny",
            "input_channels": in_channels,
            "num_classes": max(classes, default=0) + 1,
            "pool_op_kernel_sizes": pool_kernels_for(tuple(patch_size)),
        },
        classes=classes,
        in_channels=in_channels,
        spacing=spacing,
        normalization=dict(normalization or {"scheme": "zscore"}),
        patch_size=patch_size,
        license="Apache-2.0",
        provenance={"source": "random weights for tests"},
        description="Tiny random STU-Net for tests.",
    )


def save_tiny_model(
    directory: str | Path,
    *,
    model_id: str = "tiny-stunet",
    classes: dict[int, str] | None = None,
    patch_size: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] | None = (3.0, 1.0, 1.0),
    normalization: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Build a tiny random STU-Net, save it in our format under ``directory`` and return that folder.

    ``classes`` defaults to ``{1: "tumour"}``; the network outputs ``max(classes) + 1`` softmax channels.
    Pass ``directory = tsfm_home() / "models" / model_id`` to install it under its id.
    """
    import torch
    from tsfm_backend.checkpoints import save_model
    from tsfm_backend.models import build_network

    card = tiny_card(
        model_id=model_id, classes=classes, patch_size=patch_size, spacing=spacing, normalization=normalization
    )
    torch.manual_seed(seed)
    network = build_network(card)
    return save_model(network, card, directory)
