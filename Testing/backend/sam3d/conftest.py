"""Fixtures for the SAM-3D suites: a tiny network with non-trivial weights and the authors' file layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from tsfm_backend.models.sam3d import PRESETS, Sam3D


@pytest.fixture
def tiny_network() -> Sam3D:
    """The ``tiny`` preset with every weight perturbed, so rel-pos tables, ``lr`` and biases all matter."""
    torch.manual_seed(0)
    network = Sam3D(**PRESETS["tiny"])
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network.eval()


def official_layout(network: Sam3D) -> dict[str, Any]:
    """``network`` as the authors' training script saves it: three parts, four prompt encoders, optimizers,
    and the validation loss as a numpy scalar (``np.mean`` of per-case losses).

    The first three prompt encoders get their own random values (the published model never reads them).
    """
    encoder = {k: v.clone() for k, v in network.image_encoder.state_dict().items()}
    for index, block in enumerate(network.image_encoder.blocks):
        if block.attn_mask is not None:
            encoder[f"blocks.{index}.attn_mask"] = block.attn_mask.clone()
    prompt = {k: v.clone() for k, v in network.prompt_encoder.state_dict().items()}
    unused = [{k: torch.randn_like(v) for k, v in prompt.items()} for _ in range(3)]
    optimizer = torch.optim.AdamW(network.mask_decoder.parameters(), lr=4e-4, weight_decay=0)
    return {
        "epoch": 500,
        "best_val_loss": np.mean(
            [np.array([[0.2]], dtype=np.float32), np.array([[0.225]], dtype=np.float32)]
        ),
        "encoder_dict": encoder,
        "decoder_dict": {k: v.clone() for k, v in network.mask_decoder.state_dict().items()},
        "feature_dict": [*unused, prompt],
        "encoder_opt": optimizer.state_dict(),
        "feature_opt": optimizer.state_dict(),
        "decoder_opt": optimizer.state_dict(),
    }


@pytest.fixture
def write_official(tmp_path) -> Callable[..., Any]:
    """``write_official(network, name="best.pth.tar") -> path`` saving the authors' layout with torch.save."""

    def write(network: Sam3D, name: str = "best.pth.tar", checkpoint: dict[str, Any] | None = None):
        folder = tmp_path / "kits"
        folder.mkdir(exist_ok=True)
        path = folder / name
        torch.save(official_layout(network) if checkpoint is None else checkpoint, path)
        return path

    return write


@pytest.fixture
def layout() -> Callable[[Sam3D], dict[str, Any]]:
    return official_layout
