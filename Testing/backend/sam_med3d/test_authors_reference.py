"""SAM-Med3D imported from the authors' file layout computes what the authors' code computes.

``reference_outputs/sam_med3d/sam_med3d_reference.npz`` was written by ``make_sam_med3d_reference.py``
beside it, in an environment of its own, from MedIM's ``SAM_Med3D`` and ``utils/infer_utils.py`` of the
authors' repository (TorchIO 0.20.8). The weights are rebuilt here from each tensor's name and checked
against the digest stored with them.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from support.reference_outputs import REFERENCE_DIR, load_outputs, nudged
from tsfm_backend.checkpoints import instantiate, read_checkpoint
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference import sam_med3d as procedure
from tsfm_backend.models.sam_med3d import PRESETS
from tsfm_backend.shared_data import shared_data_dir

FOLDER = REFERENCE_DIR / "sam_med3d"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sam_med3d_reference", FOLDER / "make_sam_med3d_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _load_script()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_outputs(SCRIPT.OUTPUT)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """The reference weights saved as the authors save them, read back through our importer."""
    from tsfm_backend.models.sam_med3d import build

    weights = SCRIPT.reference_weights(build(**PRESETS["tiny"]).state_dict())
    path = tmp_path_factory.mktemp("sam_med3d") / "sam_med3d_tiny.pth"
    torch.save({"epoch": 3, "model_state_dict": weights, "best_dice": 0.5}, path)
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "sam_med3d"
    return instantiate(card, state_dict).eval(), card


def test_reference_files_are_small_and_from_the_authors_code(reference):
    assert str(reference["torchio_version"]) == "0.20.8"
    assert sum(path.stat().st_size for path in FOLDER.iterdir()) < 30_000
    tiny = {key: PRESETS["tiny"][key] for key in SCRIPT.CONFIG}
    assert tiny == SCRIPT.CONFIG
    assert PRESETS["tiny"]["transformer_mlp_dim"] == 2048 and PRESETS["tiny"]["transformer_heads"] == 8


def test_weight_names_shapes_and_order_are_the_authors(reference, imported):
    network, card = imported
    ours = "\n".join(f"{k} {tuple(v.shape)}" for k, v in network.state_dict().items())
    assert ours == str(reference["keys"])
    assert SCRIPT.weights_digest(network.state_dict()) == str(reference["weights_sha256"])
    assert card.family == "sam_med3d" and card.provenance["preset"] == "tiny" and card.provenance["epoch"] == 3
    assert card.spacing == (1.5, 1.5, 1.5) and card.axis_order == "ras" and card.patch_size == (64, 64, 64)
    assert card.license == "Apache-2.0" and card.kind == "promptable"


def _clicks(network: torch.nn.Module) -> list[torch.Tensor]:
    """Low-resolution logits after 1, 2, 3 of the reference clicks, fed back as the authors' loop does."""
    image = torch.from_numpy(SCRIPT.reference_input())
    out, previous = [], None
    with torch.no_grad():
        embedding = network.encode(image)
        for count in range(1, len(SCRIPT.CLICKS) + 1):
            previous = procedure.decode_step(lambda p, q, m: network.decode(embedding, p, q, m),
                                             SCRIPT.CLICKS[:count], previous, network.low_res_size, torch.device("cpu"))
            out.append(previous)
    return [embedding, *out]


def _matches(reference, outputs) -> bool:
    names = ["embedding"] + [f"logits_{n}" for n in (1, 2, 3)]
    for name, tensor in zip(names, outputs, strict=True):
        samples, sums = SCRIPT.summary(tensor.numpy())
        if not np.allclose(samples, reference[f"{name}_samples"], rtol=0, atol=1e-5):
            return False
        if not np.allclose(sums, reference[f"{name}_sums"], rtol=1e-6, atol=1e-3):
            return False
    return True


def test_network_and_click_loop_compute_the_authors_outputs(reference, imported):
    network, _ = imported
    outputs = _clicks(network)
    assert _matches(reference, outputs)
    for count, logits in enumerate(outputs[1:], start=1):
        mask = procedure.crop_mask(logits, SCRIPT.CONFIG["img_size"])
        np.testing.assert_array_equal(SCRIPT.mask_signature(mask), reference[f"mask_{count}"])


@pytest.mark.parametrize("name", ["image_encoder.blocks.0.attn.rel_pos_h", "prompt_encoder.mask_downscaling.0.weight",
                                  "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight"])
def test_a_perturbed_weight_no_longer_matches(reference, imported, name):
    network, _ = imported
    weight = dict(network.named_parameters())[name]
    with nudged(weight, (0,) * weight.ndim, delta=0.2):
        assert not _matches(reference, _clicks(network))


@pytest.mark.parametrize("case", SCRIPT.CASES)
def test_crop_and_way_back_are_the_authors_on_real_ct(reference, case):
    volume = read_volume(shared_data_dir() / "sts" / case / "ct.nii.gz")
    assert str(volume.array.dtype) == str(reference[f"{case}_dtype"]).removeprefix("torch.")
    grid = procedure.grid_for(volume, SCRIPT.SPACING_MM)
    assert grid.canonical == tuple(reference[f"{case}_canonical_shape"])
    low, high = reference[f"{case}_label_box"]
    start = procedure.place_crop(low, high, SCRIPT.CROP)
    assert start == tuple(reference[f"{case}_crop_start"])
    crop = procedure.normalize_crop(procedure.extract_crop(volume.array, grid, start, SCRIPT.CROP))
    samples, sums = SCRIPT.summary(crop.numpy())
    np.testing.assert_allclose(samples, reference[f"{case}_crop_samples"], rtol=0, atol=1e-5)
    # float32 sums over 2 million voxels: the reduction order (threads) moves them in the 8th digit
    np.testing.assert_allclose(sums, reference[f"{case}_crop_sums"], rtol=1e-6)
    origin, region = procedure.paste(SCRIPT.fixed_crop_mask().astype(bool), grid, start)
    back = np.zeros(volume.shape, dtype=np.uint8)
    back[tuple(slice(o, o + n) for o, n in zip(origin, region.shape, strict=True))] = region
    np.testing.assert_array_equal(SCRIPT.mask_signature(back), reference[f"{case}_back_mask"])
    hits = np.argwhere(back)
    np.testing.assert_array_equal([hits.min(0), hits.max(0) + 1], reference[f"{case}_back_box"])



def test_import_installs_a_loadable_model_and_pymic_does_not_claim_it(tmp_path, monkeypatch, imported):
    from tsfm_backend.checkpoints import import_model, load_model
    from tsfm_backend.commands.import_model import describe

    monkeypatch.setenv("TSFM_HOME", str(tmp_path / "home"))
    network, _ = imported
    path = tmp_path / "sam_med3d_turbo_like.pth"
    torch.save({"model_state_dict": network.state_dict()}, path)
    card, folder, fmt = import_model(path, "sam-med3d-tiny")
    assert fmt == "sam_med3d" and (folder / "model.json").is_file()
    assert any("1.5 x 1.5 x 1.5 mm" in line for line in describe(card, fmt))
    loaded = load_model("sam-med3d-tiny")
    assert loaded.card.family == "sam_med3d"
    for name, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], value)
