"""SuPreM's UNet3D Universal Model, imported from a file in the released layout, computes what the
authors' network computes.

``reference_outputs/suprem_unet_universal.npz`` holds the output of SuPreM's own ``Universal_model(
backbone="unet")`` (``reference_outputs/make_suprem_unet_reference.py`` made it from the authors'
checkout, in an environment of its own); the weights are rebuilt here from each tensor's name in the
authors' ``state_dict`` and checked against the digest stored with it.
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

REFERENCE = load_script("make_suprem_unet_reference")


def authors_name(key: str) -> str:
    """Our UniversalModel's key as the authors' ``Universal_model`` names it (body under ``backbone.``)."""
    return key if key.startswith(suprem.UNIVERSAL_HEAD_KEYS) else f"backbone.{key}"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def imported(reference, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """Our network with the reference weights, written as a released SuPreM file and imported back."""
    network = suprem.build("unet", 1, REFERENCE.NUM_CLASSES, head="universal").eval()
    theirs = REFERENCE.reference_weights({authors_name(k): v for k, v in network.state_dict().items()})
    network.load_state_dict({k: theirs[authors_name(k)] for k in network.state_dict()}, strict=True)
    path = write_suprem_checkpoint(tmp_path_factory.mktemp("suprem") / "supervised_suprem_unet_2100.pth",
                                   network, universal=True)
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "suprem"
    assert card.architecture == {"backbone": "unet", "in_channels": 1, "num_classes": REFERENCE.NUM_CLASSES,
                                 "head": "universal"}
    return instantiate(card, state_dict).eval(), path


def _output(network: torch.nn.Module, reference: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return network(torch.from_numpy(reference["input"].astype(np.float32)))


def test_reference_is_small_and_from_the_authors_universal_unet(reference):
    assert str(reference["monai_version"]).startswith("0.9.")
    assert "backbone='unet'" in str(reference["config"])
    assert reference["input"].shape == (1, 1, 24, 16, 16) and reference["input"].dtype == np.float16
    assert reference["output"].shape == (1, REFERENCE.NUM_CLASSES, 24, 16, 16)
    assert reference["output"].dtype == np.float32 and reference["output"].std() > 0.05
    assert REFERENCE.OUTPUT.stat().st_size < 300_000


def test_the_file_has_the_authors_keys_in_their_order(reference, imported):
    _, path = imported
    stored = torch.load(path, map_location="cpu", weights_only=True)["net"]
    assert list(stored) == [f"module.{key}" for key in reference["keys"].tolist()]


def test_imported_unet_computes_the_authors_output(reference, imported):
    network, _ = imported
    theirs = {authors_name(k): v for k, v in network.state_dict().items()}
    assert REFERENCE.weights_digest(theirs) == str(reference["weights_sha256"])
    torch.testing.assert_close(_output(network, reference), torch.from_numpy(reference["output"]),
                               rtol=0, atol=1e-5)


def test_a_perturbed_weight_or_running_statistics_do_not(reference, imported):
    network, _ = imported
    expected = torch.from_numpy(reference["output"])
    weight = network.up_tr64.ops[1].conv1.weight
    with nudged(weight, (0, 0, 1, 1, 1)):
        assert (_output(network, reference) - expected).abs().max() > 1e-3
    # The authors' ContBatchNorm3d normalises with the batch's statistics in eval mode too.
    norms = [m for m in network.modules() if isinstance(m, suprem.ContBatchNorm3d)]
    assert len(norms) == 14
    try:
        for norm in norms:
            norm.forward = torch.nn.modules.batchnorm._BatchNorm.forward.__get__(norm)
        assert (_output(network, reference) - expected).abs().max() > 0.1
    finally:
        for norm in norms:
            del norm.forward
    torch.testing.assert_close(_output(network, reference), expected, rtol=0, atol=1e-5)
