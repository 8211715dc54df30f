"""MIS-FM's FMUNet, imported from a PyMIC checkpoint, computes what the authors' network computes.

``reference_outputs/misfm_fmunet_reference.npz`` holds the outputs of MIS-FM's own ``net/fmunet.py``
(``reference_outputs/make_misfm_fmunet_reference.py`` made it from the authors' checkout, in an
environment of its own); the weights are rebuilt here from each tensor's name and checked against the
digest stored with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.official_checkpoints import write_pymic_checkpoint
from support.reference_outputs import FLOAT32_ATOL, load_outputs, load_script, nudged
from tsfm_backend.checkpoints import instantiate, read_checkpoint
from tsfm_backend.formats.safe_unpickler import torch_load
from tsfm_backend.models import fmunet

REFERENCE = load_script("make_misfm_fmunet_reference")
CONFIG = REFERENCE.CONFIG


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """Our network with the reference weights, written as a PyMIC checkpoint and imported back."""
    network = fmunet.build(CONFIG["in_chns"], CONFIG["class_num"], feature_chns=CONFIG["feature_chns"],
                           depth=CONFIG["depth"], res_mode=CONFIG["res_mode"]).eval()
    network.load_state_dict(REFERENCE.reference_weights(network.state_dict()), strict=True)
    path = write_pymic_checkpoint(tmp_path_factory.mktemp("misfm") / "fmunet_small_volf.pt", network)
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "pymic" and card.family == "fmunet"
    assert card.architecture == {key: CONFIG[key] for key in ("in_chns", "class_num", "feature_chns", "depth",
                                                              "res_mode")}
    return instantiate(card, state_dict).eval(), path


def _output(network: torch.nn.Module, reference: dict[str, np.ndarray]):
    with torch.no_grad():
        return network(torch.from_numpy(reference["input"].astype(np.float32)))


def test_reference_is_small_and_from_the_authors_fmunet(reference):
    assert str(reference["config"]).startswith("FMUNet(")
    assert reference["input"].shape == (1, 1, 16, 32, 16) and reference["input"].dtype == np.float16
    assert reference["output"].shape == (1, CONFIG["class_num"], 16, 32, 16)
    assert reference["output"].dtype == np.float32 and reference["output"].std() > 0.05
    assert [reference[f"output_{i}"].shape[2:] for i in (1, 2, 3)] == [(16, 16, 8), (8, 8, 4), (4, 4, 2)]
    assert REFERENCE.OUTPUT.stat().st_size < 300_000


def test_the_file_has_the_authors_keys_in_their_order(reference, imported):
    _, path = imported
    stored = torch_load(path)["model_state_dict"]
    assert list(stored) == reference["keys"].tolist()


def test_imported_fmunet_computes_the_authors_outputs(reference, imported):
    network, _ = imported
    assert REFERENCE.weights_digest(network.state_dict()) == str(reference["weights_sha256"])
    torch.testing.assert_close(_output(network, reference), torch.from_numpy(reference["output"]),
                               rtol=0, atol=FLOAT32_ATOL)
    network.deep_supervision = True
    try:
        outputs = _output(network, reference)
    finally:
        network.deep_supervision = False
    assert len(outputs) == 4
    torch.testing.assert_close(outputs[0], torch.from_numpy(reference["output"]), rtol=0, atol=FLOAT32_ATOL)
    for i in (1, 2, 3):
        torch.testing.assert_close(outputs[i], torch.from_numpy(reference[f"output_{i}"]), rtol=0, atol=FLOAT32_ATOL)


def test_a_perturbed_weight_does_not(reference, imported):
    network, _ = imported
    expected = torch.from_numpy(reference["output"])
    weight = network.decoder.de_conv1.conv_list[0][3].weight
    with nudged(weight.view(-1), (0,)):
        assert (_output(network, reference) - expected).abs().max() > 1e-3
    torch.testing.assert_close(_output(network, reference), expected, rtol=0, atol=FLOAT32_ATOL)
