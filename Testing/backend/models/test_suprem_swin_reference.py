"""SuPreM's SwinUNETR computes what the authors' MONAI 0.9.0 computes: the patch merging order.

``reference_outputs/suprem_swinunetr_monai090.npz`` holds a SwinUNETR output computed by MONAI 0.9.0
itself (``reference_outputs/make_suprem_swin_reference.py`` made it, in an environment of its own); the
weights and the input are rebuilt here from the same formulas and checked against the digests stored with
them; the output is stored at every second voxel along each axis (``REFERENCE.stored``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from support.official_checkpoints import write_suprem_checkpoint
from support.reference_outputs import FLOAT32_ATOL, load_outputs, load_script
from tsfm_backend.checkpoints import instantiate, read_checkpoint
from tsfm_backend.models import patch_merging, suprem

REFERENCE = load_script("make_suprem_swin_reference")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(REFERENCE.OUTPUT)


def _network(**architecture) -> torch.nn.Module:
    network = suprem.build("swinunetr", 1, 2, feature_size=12, **architecture).eval()
    network.load_state_dict(REFERENCE.reference_weights(network.state_dict()), strict=True)
    return network


def _output(network: torch.nn.Module, reference: dict[str, np.ndarray]) -> torch.Tensor:
    """The network's output on the reference input, reduced as the file stores it."""
    image = REFERENCE.reference_input()
    assert hashlib.sha256(image.tobytes()).hexdigest() == str(reference["input_sha256"])
    with torch.no_grad():
        return torch.from_numpy(REFERENCE.stored(network(torch.from_numpy(image.astype(np.float32))).numpy()))


def test_reference_is_small_and_from_monai_0_9(reference):
    assert str(reference["monai_version"]).startswith("0.9.")
    assert reference["output"].shape == (1, 2, 32, 16, 16) and reference["output"].dtype == np.float32
    assert REFERENCE.OUTPUT.stat().st_size < 100_000


@pytest.fixture(scope="module")
def legacy() -> torch.nn.Module:
    return _network(patch_merging="monai<1.5")


@pytest.mark.slow
def test_legacy_patch_merging_computes_monai_0_9_and_the_current_order_does_not(reference, legacy):
    expected = torch.from_numpy(reference["output"])
    assert REFERENCE.weights_digest(legacy.state_dict()) == str(reference["weights_sha256"])
    torch.testing.assert_close(_output(legacy, reference), expected, rtol=0, atol=FLOAT32_ATOL)
    current = _output(_network(), reference)  # no flag: the order of MONAI 1.5 and later
    assert (current - expected).abs().max() > 0.5


def test_a_suprem_file_imports_with_the_legacy_order(tmp_path, legacy):
    """The importer's card builds the network checked above: same merging layers, same weights."""
    path = write_suprem_checkpoint(tmp_path / "suprem_swinunetr_finetuned.pth", legacy, universal=False)
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "suprem" and card.architecture["patch_merging"] == "monai<1.5"
    network = instantiate(card, state_dict)
    for level in range(1, 5):
        merging = getattr(network.swinViT, f"layers{level}")[0].downsample
        assert type(merging) is patch_merging.PatchMergingBefore15
    expected = legacy.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in network.state_dict().items())


def _tokens() -> torch.Tensor:
    """(1, 2, 2, 2, 1) tokens whose value names their (d, h, w) offset: 100 d + 10 h + w."""
    d, h, w = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    return (100 * d + 10 * h + w).float()[None, ..., None]


class _Gather(torch.nn.Module):
    """Stands in for norm and reduction so the concatenated slices come out as they are."""

    def forward(self, x):
        return x


@pytest.mark.parametrize(("order", "gathered"), [
    ("monai<1.5", [0, 100, 10, 1, 101, 10, 1, 111]),  # 010 and 001 twice, 110 and 011 never
    ("monai>=1.5", [0, 100, 10, 1, 110, 101, 11, 111]),
])
def test_patch_merging_concatenates_the_neighbours_in_the_order_of_its_monai(order, gathered):
    merging = patch_merging.merging_class(order)(dim=1)
    merging.norm, merging.reduction = _Gather(), _Gather()
    assert merging(_tokens()).flatten().tolist() == gathered


def test_the_current_order_is_installed_monai_s_when_that_is_1_5_or_later():
    import monai
    from monai.networks.nets.swin_unetr import PatchMerging

    if tuple(int(p) for p in monai.__version__.split(".")[:2]) < (1, 5):
        pytest.skip(f"MONAI {monai.__version__} merges in the order before 1.5")
    torch.manual_seed(0)
    ours, theirs = patch_merging.merging_class("monai>=1.5")(dim=4), PatchMerging(dim=4)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 6, 8, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_an_unknown_patch_merging_order_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown patch_merging 'monai-0.8'"):
        suprem.build("swinunetr", 1, 2, preset="tiny-swinunetr", patch_merging="monai-0.8")
