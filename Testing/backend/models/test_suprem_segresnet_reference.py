"""SuPreM's SegResNet, imported from a file in the released layout, computes what MONAI 0.9.0 computes.

``reference_outputs/suprem_segresnet_monai090.npz`` holds the output of MONAI 0.9.0's SegResNet in the
authors' configuration (``reference_outputs/make_suprem_segresnet_reference.py`` made it, in an
environment of its own); the weights are rebuilt here from each tensor's name and checked against the
digest stored with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.official_checkpoints import write_suprem_checkpoint
from support.reference_outputs import load_outputs, load_script, nudged
from tsfm_backend.checkpoints import instantiate, read_checkpoint
from tsfm_backend.models import suprem

REFERENCE = load_script("make_suprem_segresnet_reference")
NUM_CLASSES = REFERENCE.CONFIG["out_channels"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """Our network with the reference weights, written as a released SuPreM file and imported back."""
    network = suprem.build("segresnet", 1, NUM_CLASSES).eval()
    network.load_state_dict(REFERENCE.reference_weights(network.state_dict()), strict=True)
    path = write_suprem_checkpoint(tmp_path_factory.mktemp("suprem") / "supervised_suprem_segresnet_2100.pth",
                                   network, universal=False)
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "suprem" and card.head_trained
    assert card.architecture == {"backbone": "segresnet", "in_channels": 1, "num_classes": NUM_CLASSES}
    return instantiate(card, state_dict).eval(), path


def _output(network: torch.nn.Module, reference: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return network(torch.from_numpy(reference["input"].astype(np.float32)))


def test_reference_is_small_and_from_monai_0_9(reference):
    assert str(reference["monai_version"]).startswith("0.9.")
    assert "blocks_down=[1, 2, 2, 4]" in str(reference["config"]) and "init_filters=16" in str(reference["config"])
    assert reference["input"].shape == (1, 1, 24, 16, 16) and reference["input"].dtype == np.float16
    assert reference["output"].shape == (1, NUM_CLASSES, 24, 16, 16)
    assert reference["output"].dtype == np.float32 and reference["output"].std() > 0.05
    assert REFERENCE.OUTPUT.stat().st_size < 300_000


def test_the_file_has_monai_0_9_s_keys_in_their_order(reference, imported):
    _, path = imported
    stored = torch.load(path, map_location="cpu", weights_only=True)["net"]
    assert list(stored) == [f"module.{key}" for key in reference["keys"].tolist()]


def test_imported_segresnet_computes_monai_0_9_s_output(reference, imported):
    network, _ = imported
    assert REFERENCE.weights_digest(network.state_dict()) == str(reference["weights_sha256"])
    torch.testing.assert_close(_output(network, reference), torch.from_numpy(reference["output"]),
                               rtol=0, atol=1e-5)


def test_a_perturbed_weight_does_not(reference, imported):
    network, _ = imported
    expected = torch.from_numpy(reference["output"])
    weight = network.down_layers[2][1].conv1.conv.weight
    with nudged(weight, (0, 0, 1, 1, 1)):
        assert (_output(network, reference) - expected).abs().max() > 1e-3
    torch.testing.assert_close(_output(network, reference), expected, rtol=0, atol=1e-5)
