"""MIS-FM's PCT-Net, imported from a PyMIC checkpoint, computes what the authors' network computes.

``reference_outputs/pctnet_reference.npz`` holds the multiscale outputs of MIS-FM's own ``net/pct_net.py``
(``reference_outputs/make_pctnet_reference.py`` made it from the authors' checkout, in an environment of
its own); the weights and the input are rebuilt here and checked against the digests stored with them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from support.official_checkpoints import write_pymic_checkpoint
from support.reference_outputs import FLOAT32_ATOL, load_outputs, load_script, nudged
from tsfm_backend.checkpoints import import_model, load_model
from tsfm_backend.formats.safe_unpickler import torch_load
from tsfm_backend.models import pctnet

REFERENCE = load_script("make_pctnet_reference")
CONFIG = REFERENCE.CONFIG
# What the file cannot tell: the patch the Swin layers were built for and the embedding branch that runs.
IMPORT_ARCHITECTURE = {"input_size": CONFIG["input_size"], "resolution_mode": CONFIG["resolution_mode"]}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def image(reference) -> torch.Tensor:
    image = REFERENCE.reference_input()
    assert hashlib.sha256(image.tobytes()).hexdigest() == str(reference["input_sha256"])
    return torch.from_numpy(image.astype(np.float32))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """Our network with the reference weights, written as a PyMIC checkpoint, imported and loaded back."""
    keys = ("feature_chns", "dropout", "depths", "num_heads", "window_sizes", "resolution_mode")
    network = pctnet.build(CONFIG["in_chns"], CONFIG["class_num"], input_size=CONFIG["input_size"],
                           **{key: CONFIG[key] for key in keys})
    network.load_state_dict(REFERENCE.reference_weights(network.state_dict()), strict=True)
    path = write_pymic_checkpoint(tmp_path_factory.mktemp("misfm") / "pctnet_small_volf.pt", network)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TSFM_HOME", str(tmp_path_factory.mktemp("tsfm_home")))
        card, _, fmt = import_model(path, "pctnet-small", architecture=IMPORT_ARCHITECTURE)
        loaded = load_model("pctnet-small")
    assert fmt == "pymic" and card.family == "pctnet" and card.patch_size == tuple(CONFIG["input_size"])
    return loaded.network, path


def _outputs(network: torch.nn.Module, image: torch.Tensor) -> list[np.ndarray]:
    """The multiscale outputs, reduced as the file stores them."""
    network.deep_supervision = True
    try:
        with torch.no_grad():
            outputs = network(image)
    finally:
        network.deep_supervision = False
    return [REFERENCE.stored(i, y.numpy()) for i, y in enumerate(outputs)]


def test_reference_is_small_and_from_the_authors_pctnet(reference):
    assert str(reference["config"]).startswith("PCTNet(")
    shapes = [reference[f"output_{i}"].shape for i in range(4)]
    assert shapes == [(1, 2, 8, 16, 24), (1, 2, 8, 8, 12), (1, 2, 8, 8, 12), (1, 2, 4, 4, 6)]
    assert all(reference[f"output_{i}"].dtype == np.float32 and reference[f"output_{i}"].std() > 0.5
               for i in range(4))
    assert REFERENCE.OUTPUT.stat().st_size < 60_000


def test_the_importer_reads_the_architecture_off_the_weights(imported):
    network, _ = imported
    assert network.input_size == tuple(CONFIG["input_size"]) and network.resolution_mode == 1
    assert [layer.trans.blocks[0].window for layer in (network.pyramid_ct.convtrans_e2,
                                                       network.pyramid_ct.convtrans_e3,
                                                       network.pyramid_ct.convtrans_e4)] == [3, 3, 2]


def test_the_file_has_the_authors_keys_in_their_order(reference, imported):
    _, path = imported
    stored = torch_load(path)["model_state_dict"]
    assert list(stored) == reference["keys"].tolist()


def test_imported_pctnet_computes_the_authors_outputs(reference, imported, image):
    network, _ = imported
    assert REFERENCE.weights_digest(network.state_dict()) == str(reference["weights_sha256"])
    for i, output in enumerate(_outputs(network, image)):
        np.testing.assert_allclose(output, reference[f"output_{i}"], rtol=0, atol=FLOAT32_ATOL, err_msg=f"output {i}")
    with torch.no_grad():
        plain = network(image).numpy()
    np.testing.assert_allclose(REFERENCE.stored(0, plain), reference["output_0"], rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize(("weight", "index"), [
    # shifted, padded windows: row 28 of the bias table is offset (0, 0, 0), which every token attends with
    ("pyramid_ct.convtrans_e2.trans.blocks.1.attn.relative_position_bias_table", (28, 0)),
    ("pyramid_ct.convtrans_e4.trans.blocks.0.attn.qkv.weight", (0, 0)),  # the window shrunk to the grid
    ("pred_heads.1.up1.conv.2.weight", (0, 0, 0, 0, 0)),  # the released branch's head
])
def test_a_perturbed_weight_does_not(reference, imported, image, weight, index):
    network, _ = imported
    with nudged(network.get_parameter(weight), index, delta=0.5):
        output = _outputs(network, image)[0]
    assert np.abs(output - reference["output_0"]).max() > 1e-3
    np.testing.assert_allclose(_outputs(network, image)[0], reference["output_0"], rtol=0, atol=FLOAT32_ATOL)
