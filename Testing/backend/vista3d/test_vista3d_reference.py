"""VISTA3D imported from a file in the released ``model.pt`` layout computes what MONAI 1.4.0 computes.

``reference_outputs/vista3d/vista3d_monai140.npz`` holds the automatic and click outputs of MONAI 1.4.0's
``vista3d132(encoder_embed_dim=16)`` (the bundle pins MONAI 1.4.0; ``make_vista3d_reference.py`` beside
it made them with MONAI 1.4.0 first on the path); the weights are rebuilt here from each tensor's name and
checked against the digest stored with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.reference_outputs import FLOAT32_ATOL, REFERENCE_DIR, load_outputs, load_script, nudged
from tsfm_backend.checkpoints import import_model, instantiate, load_model, read_checkpoint
from tsfm_backend.models import vista3d

REFERENCE = load_script("vista3d/make_vista3d_reference")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


@pytest.fixture(scope="module")
def released_file(tmp_path_factory) -> Path:
    """The reference weights saved as the bundle's ``models/model.pt``: a plain state_dict."""
    network = vista3d.build(encoder_embed_dim=REFERENCE.ENCODER_EMBED_DIM, class_prompts=REFERENCE.CLASS_PROMPTS)
    weights = REFERENCE.reference_weights(network.state_dict())
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    torch.save(weights, path)
    return path


@pytest.fixture(scope="module")
def imported(released_file) -> torch.nn.Module:
    state_dict, card, fmt = read_checkpoint(released_file)
    assert fmt == "vista3d"
    card.architecture["class_prompts"] = list(REFERENCE.CLASS_PROMPTS)
    return instantiate(card, state_dict).eval()


def _automatic(network: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return network(torch.from_numpy(REFERENCE.reference_input()))[0][(slice(None), *REFERENCE.SUBSAMPLE)]


def _clicks(network: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        logits = network.point_logits(torch.from_numpy(REFERENCE.reference_input()),
                                      torch.tensor(REFERENCE.POINTS), torch.tensor(REFERENCE.POINT_LABELS))
    return logits[REFERENCE.SUBSAMPLE]


def test_reference_is_small_and_from_the_bundle_s_monai(reference):
    assert str(reference["monai_version"]) == "1.4.0"
    assert str(reference["config"]) == "vista3d132(encoder_embed_dim=16)"
    assert reference["automatic"].shape == (len(REFERENCE.CLASS_PROMPTS), 8, 8, 8)
    assert reference["points"].shape == (8, 8, 8)
    assert reference["automatic"].std() > 0.5 and reference["points"].std() > 0.5
    assert str(reference["input_sha256"]) == REFERENCE.input_digest(REFERENCE.reference_input())
    assert sum(p.stat().st_size for p in (REFERENCE_DIR / "vista3d").iterdir()) < 40_000


def test_the_released_names_are_monai_s_in_their_order(reference, released_file):
    stored = torch.load(released_file, map_location="cpu", weights_only=True)
    assert list(stored) == reference["keys"].tolist()


def test_the_importer_reads_the_architecture_from_the_weights(released_file):
    _, card, _ = read_checkpoint(released_file)
    assert card.architecture == {"encoder_embed_dim": 16, "blocks_down": [1, 2, 2, 4, 4], "n_classes": 512,
                                 "last_supported": 132}
    assert card.family == "vista3d" and card.output == "sigmoid" and card.axis_order == "ras"


def test_imported_vista3d_computes_monai_1_4_s_outputs(reference, imported):
    assert REFERENCE.weights_digest(imported.state_dict()) == str(reference["weights_sha256"])
    torch.testing.assert_close(_automatic(imported), torch.from_numpy(reference["automatic"]), rtol=0, atol=FLOAT32_ATOL)
    torch.testing.assert_close(_clicks(imported), torch.from_numpy(reference["points"]), rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("name", ["image_encoder.encoder.layers.2.blocks.1.conv1.weight",
                                  "point_head.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"])
def test_a_perturbed_weight_does_not(reference, imported, name):
    weight = imported.state_dict(keep_vars=True)[name]
    output = _automatic if name.startswith("image_encoder") else _clicks
    key = "automatic" if name.startswith("image_encoder") else "points"
    expected = torch.from_numpy(reference[key])
    with nudged(weight, (0,) * weight.dim()):
        assert (output(imported) - expected).abs().max() > 1e-3
    torch.testing.assert_close(output(imported), expected, rtol=0, atol=FLOAT32_ATOL)


def test_import_installs_a_model_that_loads_by_id(released_file):
    card, folder, fmt = import_model(released_file)
    assert (card.id, fmt) == ("vista3d", "vista3d") and (folder / "model.json").is_file()
    loaded = load_model("vista3d")
    assert len(loaded.card.classes) == 117 and loaded.card.classes[1] == "liver"
    assert loaded.card.spacing == (1.5, 1.5, 1.5) and loaded.card.patch_size == (128, 128, 128)
    assert loaded.card.normalization["lower"] == pytest.approx(-963.8247715525971)
    assert "non-commercial" in loaded.card.license
