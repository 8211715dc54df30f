"""3DSAM-adapter's network, imported from the authors' checkpoint layout, computes what their network does.

``reference_outputs/sam3d_network_reference.npz`` holds the logits of the authors' own image encoder,
prompt encoder and mask decoder (``reference_outputs/make_sam3d_network_reference.py`` ran them in an
environment of its own) on one crop with two click sets; weights and crop are rebuilt here and checked
against the digests stored with them.

The importer recognises 3DSAM-adapter files by matching every key and shape against ``PRESETS``; the
reference sizes are registered there as one more preset for the import, as a new release would be.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from support.official_checkpoints import write_sam3d_checkpoint
from support.reference_outputs import load_outputs, load_script, nudged
from tsfm_backend.checkpoints import instantiate, read_checkpoint
from tsfm_backend.models.sam3d import PRESETS, Sam3D

REFERENCE = load_script("make_sam3d_network_reference")
ARCHITECTURE = REFERENCE.ARCHITECTURE


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def crop(reference) -> torch.Tensor:
    image = REFERENCE.reference_input()
    assert hashlib.sha256(image.tobytes()).hexdigest() == str(reference["input_sha256"])
    return torch.from_numpy(image.astype(np.float32))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Sam3D:
    """Our network with the reference weights, saved in the authors' layout and imported back."""
    network = Sam3D(**ARCHITECTURE).eval()
    network.load_state_dict(REFERENCE.reference_weights(network.state_dict()), strict=True)
    path = write_sam3d_checkpoint(tmp_path_factory.mktemp("sam3d") / "colon" / "best.pth.tar", network)
    del network
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PRESETS, "reference", dict(ARCHITECTURE))
        state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "sam3d" and card.architecture == ARCHITECTURE and card.normalization["mean"] == 65.175035
    return instantiate(card, state_dict)


def _logits(network: Sam3D, crop: torch.Tensor, clicks: str) -> np.ndarray:
    points = torch.tensor(REFERENCE.CLICKS[clicks])[None]
    with torch.no_grad():
        return REFERENCE.stored(network(crop, points).numpy())


def test_reference_is_small_and_from_the_authors_network(reference):
    assert str(reference["config"]).startswith("Sam3D(")
    for clicks in REFERENCE.CLICKS:
        logits = reference[f"logits_{clicks}"]
        assert logits.shape == (1, 2, 16, 16, 16) and logits.dtype == np.float32 and logits.std() > 0.3
    assert np.abs(reference["logits_one"] - reference["logits_three"]).max() > 0.05  # the clicks matter
    assert REFERENCE.OUTPUT.stat().st_size < 80_000


@pytest.mark.parametrize("clicks", ["one", "three"])
def test_imported_network_computes_the_authors_logits(reference, imported, crop, clicks):
    assert REFERENCE.weights_digest(imported.state_dict()) == str(reference["weights_sha256"])
    np.testing.assert_allclose(_logits(imported, crop, clicks), reference[f"logits_{clicks}"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("weight", "index"), [
    ("image_encoder.blocks.1.attn.rel_pos_d", (0, 0)),  # a shifted-window block's relative positions
    ("image_encoder.blocks.11.adapter.linear2.bias", (0,)),  # the last (global attention) block
    ("prompt_encoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight", (0, 0)),  # clicks into image
    ("mask_decoder.cls.3.weight", (1, 0, 1, 1, 1)),
])
def test_a_perturbed_weight_does_not(reference, imported, crop, weight, index):
    parameter = imported.get_parameter(weight)
    with nudged(parameter, index, delta=0.5):
        assert np.abs(_logits(imported, crop, "three") - reference["logits_three"]).max() > 1e-3
    np.testing.assert_allclose(_logits(imported, crop, "three"), reference["logits_three"], rtol=0, atol=1e-5)
