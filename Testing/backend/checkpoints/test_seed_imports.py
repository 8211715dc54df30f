"""Seed checkpoints as their authors release them: SuPreM SwinUNETR and Universal Model heads, untrained
heads refused, 3DSAM-adapter datasets with the authors' statistics, MIS-FM intensities and license."""

from __future__ import annotations

import json

import pytest
import torch
from support.official_checkpoints import (
    write_pymic_checkpoint,
    write_sam3d_checkpoint,
    write_suprem_backbone,
    write_suprem_checkpoint,
)
from support.tiny_models import save_tiny_model
from tsfm_backend.checkpoints import CheckpointError, load_model, read_checkpoint, save_model
from tsfm_backend.cli import main
from tsfm_backend.formats import pymic
from tsfm_backend.formats.suprem import UNIVERSAL_32
from tsfm_backend.model_card import UntrainedHeadError
from tsfm_backend.models import fmunet, suprem
from tsfm_backend.preprocessing import normalize

TINY_SWIN = {"feature_size": 12, "depths": (1, 1, 1, 1)}


def _import(capsys, *argv) -> str:
    assert main(["import", *map(str, argv)]) == 0
    return capsys.readouterr().out


def _equal_weights(loaded, network, skip: tuple[str, ...] = ()) -> None:
    state = loaded.state_dict()
    for key, value in network.state_dict().items():
        if skip and key.startswith(skip):
            continue
        assert torch.equal(state[key], value), key


# ---- SuPreM -------------------------------------------------------------------------------------


def test_suprem_swinunetr_backbone_imports_saves_and_loads_without_the_meta_device(tmp_path, capsys):
    torch.manual_seed(0)
    network = suprem.build("swinunetr", 1, 2, **TINY_SWIN)
    path = write_suprem_backbone(tmp_path / "swinunetr_backbone.pth", network)
    out = _import(capsys, path, "--id", "swin")
    assert "family:        suprem" in out and "head:          new and untrained" in out
    loaded = load_model("swin")
    assert loaded.card.architecture == {"backbone": "swinunetr", "in_channels": 1, "feature_size": 12,
                                        "depths": [1, 1, 1, 1], "patch_merging": "monai<1.5", "num_classes": 2}
    assert not loaded.card.head_trained and loaded.card.provenance["head"].startswith("initialised")
    _equal_weights(loaded.network, network, skip=("out.",))
    folder = save_model(loaded.network, loaded.card, tmp_path / "copy")  # MONAI cannot build on meta
    assert load_model(folder).card == loaded.card


def test_suprem_swinunetr_universal_file_keeps_its_trained_head_and_class_names(tmp_path, capsys):
    torch.manual_seed(1)
    network = suprem.build("swinunetr", 1, 32, head="universal", head_groups=4, **TINY_SWIN)
    with torch.no_grad():
        network.organ_embedding.normal_()
    path = write_suprem_checkpoint(tmp_path / "supervised_suprem_swinunetr_2100.pth", network, universal=True)
    stored = list(torch.load(path, weights_only=True)["net"])
    assert stored[0] == "module.organ_embedding" and stored[-1] == "module.text_to_vision.bias"
    out = _import(capsys, path)
    assert "imported 'supervised_suprem_swinunetr_2100'" in out and "head:" not in out
    loaded = load_model("supervised_suprem_swinunetr_2100")
    card = loaded.card
    assert card.architecture == {"backbone": "swinunetr", "in_channels": 1, "feature_size": 12,
                                 "depths": [1, 1, 1, 1], "patch_merging": "monai<1.5", "num_classes": 32,
                                 "head": "universal", "head_groups": 4}
    assert card.classes[1] == "spleen" and card.classes[32] == "kidney_cyst" and len(card.classes) == 32
    assert card.output == "sigmoid" and card.num_classes == 32 and card.head_trained
    # The authors' inference: resample to 1.5 mm, then clip to [-175, 250] HU; MONAI overlap 0.75.
    assert card.normalization == {"scheme": "hu_window", "lower": -175.0, "upper": 250.0, "after_resampling": True}
    assert card.sliding_window_step == 0.25 and card.patch_size == (96, 96, 96)
    assert "normalization: hu_window [-175, 250] HU (after resampling)" in out and "step 0.25" in out
    _equal_weights(loaded.network, network)


def test_universal_file_missing_a_head_weight_is_refused_by_name(tmp_path):
    torch.manual_seed(2)
    network = suprem.build("swinunetr", 1, 4, head="universal", head_groups=4, **TINY_SWIN)
    path = write_suprem_checkpoint(tmp_path / "universal.pth", network, universal=True)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["net"]["module.controller.bias"]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="Universal Model weights missing.*controller.bias"):
        read_checkpoint(path)


def test_class_lists_follow_the_released_order():
    assert len(UNIVERSAL_32) == 32 == len(set(UNIVERSAL_32))
    assert UNIVERSAL_32[:6] == ("spleen", "kidney_right", "kidney_left", "gall_bladder", "esophagus", "liver")
    assert UNIVERSAL_32[25:] == ("kidney_tumor", "liver_tumor", "pancreas_tumor", "hepatic_vessel_tumor",
                                 "lung_tumor", "colon_tumor", "kidney_cyst")


# ---- untrained heads ----------------------------------------------------------------------------


def _untrained_model(folder):
    path = save_tiny_model(folder, model_id="backbone-only", spacing=None, patch_size=(16, 32, 32))
    card = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**card, "head_trained": False}))
    return path


def test_predict_refuses_a_model_whose_head_was_never_trained(tmp_path, capsys, shared_data):
    model = _untrained_model(tmp_path / "backbone-only")
    image = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    assert main(["predict", "-m", str(model), "-i", str(image), "-o", str(tmp_path / "out.nii.gz")]) == 2
    error = capsys.readouterr().err
    assert "'backbone-only'" in error and "untrained output head" in error and "fine-tune it first" in error
    assert not (tmp_path / "out.nii.gz").exists()


def test_jobs_refuse_a_model_whose_head_was_never_trained(tmp_path):
    from tsfm_backend.server import schemas
    from tsfm_backend.server.errors import BadInput
    from tsfm_backend.server.services import ModelRegistry, Services
    from tsfm_backend.server.settings import Settings

    loaded = load_model(_untrained_model(tmp_path / "backbone-only"))
    with pytest.raises(UntrainedHeadError, match="fine-tune it first"):
        loaded.card.require_trained_head()
    services = Services.start(Settings(), ModelRegistry([loaded]), torch.device("cpu"))
    try:
        with pytest.raises(BadInput, match="untrained output head.*fine-tune it first"):
            services.submit_job(schemas.JobCreate(image_id="0" * 32, model="backbone-only"))
    finally:
        services.close()


# ---- 3DSAM-adapter ------------------------------------------------------------------------------

# The authors' dataset/datasets.py, _set_dataset_stat: intensity_range, global_mean, global_std.
PUBLISHED = {
    "kits": (-54.0, 247.0, 59.53867, 55.457336),
    "lits": (-48.0, 163.0, 60.057533, 40.198017),
    "pancreas": (-39.0, 204.0, 68.45214, 63.422806),
    "colon": (-57.0, 175.0, 65.175035, 32.651197),
}


@pytest.fixture(scope="module")
def sam3d_tiny():
    from tsfm_backend.models import sam3d

    torch.manual_seed(6)
    return sam3d.build(**sam3d.PRESETS["tiny"]).eval()


@pytest.mark.parametrize(
    ("name", "dataset"),
    [("lits_last.pth.tar", "lits"), ("pancreas/best.pth.tar", "pancreas"), ("3dsam-colon-best.pth.tar", "colon"),
     ("kits21/last.pth.tar", "kits")],
)
def test_3dsam_dataset_is_read_from_the_file_or_folder_name(tmp_path, sam3d_tiny, name, dataset):
    path = write_sam3d_checkpoint(tmp_path / name, sam3d_tiny)
    _, card, fmt = read_checkpoint(path)
    lower, upper, mean, std = PUBLISHED[dataset]
    assert fmt == "sam3d" and card.id == f"sam3d-{dataset}"
    assert card.normalization == {"scheme": "ct_clip_zscore", "lower": lower, "upper": upper, "mean": mean, "std": std}
    assert card.provenance["dataset"] == dataset and card.provenance["dataset_from"] == "path"


def test_3dsam_dataset_option_and_refusal_listing_the_choices(tmp_path, capsys, sam3d_tiny):
    path = write_sam3d_checkpoint(tmp_path / "weights" / "best.pth.tar", sam3d_tiny)
    assert main(["import", str(path)]) == 2
    error = capsys.readouterr().err
    assert "says which dataset" in error and "kits, lits, pancreas, colon" in error and "--dataset" in error
    out = _import(capsys, path, "--dataset", "colon", "--id", "colon-tiny")
    assert "normalization: ct_clip_zscore [-57, 175] HU mean 65.175035, std 32.651197" in out
    card = load_model("colon-tiny").card
    assert card.classes == {1: "colon cancer"} and card.provenance["dataset_from"] == "option"
    assert card.normalization["mean"] == 65.175035 and card.normalization["std"] == 32.651197


def test_dataset_option_is_refused_for_other_formats(tmp_path):
    torch.manual_seed(3)
    path = write_pymic_checkpoint(tmp_path / "fmunet_abk1k_volf.pt", fmunet.build(1, 5, "tiny"))
    with pytest.raises(CheckpointError, match="a pymic checkpoint takes no dataset option"):
        read_checkpoint(path, dataset="kits")


def test_import_offers_exactly_the_published_datasets():
    from tsfm_backend.commands.import_model import SAM3D_DATASETS
    from tsfm_backend.models.sam3d import DATASETS

    assert SAM3D_DATASETS == tuple(DATASETS) == tuple(PUBLISHED)
    for name, (lower, upper, mean, std) in PUBLISHED.items():
        assert (DATASETS[name]["lower"], DATASETS[name]["upper"], DATASETS[name]["mean"],
                DATASETS[name]["std"]) == (lower, upper, mean, std)


# ---- MIS-FM -------------------------------------------------------------------------------------


def test_misfm_card_has_pymic_ct_intensities_and_the_apache_license(tmp_path, capsys):
    torch.manual_seed(3)
    path = write_pymic_checkpoint(tmp_path / "fmunet_abk1k_volf.pt", fmunet.build(1, 5, "tiny"))
    out = _import(capsys, path)
    assert "normalization: hu_window [-1000, 1000] HU -> [-1, 1]" in out and "license:       Apache-2.0" in out
    card = load_model("fmunet_abk1k_volf").card
    assert card.license == "Apache-2.0" and card.provenance["pretraining_data"] == "AbdomenCT-1K"
    assert card.normalization == {"scheme": "hu_window", "lower": -1000.0, "upper": 1000.0,
                                  "output_range": [-1.0, 1.0]}
    hu = torch.tensor([-3000.0, -1000.0, -500.0, 0.0, 400.0, 1000.0, 2500.0])
    expected = torch.clamp(hu, -1000, 1000) / 1000.0  # PyMIC: 2 * (x - v0) / (v1 - v0) - 1
    torch.testing.assert_close(normalize(hu, card.normalization), expected)
    assert pymic.RELEASES["pctnet"]["normalization"] == card.normalization


def test_hu_window_output_range_is_checked():
    window = {"scheme": "hu_window", "lower": 0.0, "upper": 100.0}
    torch.testing.assert_close(normalize(torch.tensor([50.0]), window), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="output_range must rise"):
        normalize(torch.tensor([50.0]), {**window, "output_range": [1.0, -1.0]})
    with pytest.raises(ValueError, match="two numbers"):
        normalize(torch.tensor([50.0]), {**window, "output_range": 1.0})
