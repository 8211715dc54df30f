"""Every supported format goes through `tsfm-backend import`, then load_model(id), then a forward pass."""

from __future__ import annotations

import pytest
import torch
from support.official_checkpoints import (
    stunet_for,
    write_pymic_checkpoint,
    write_suprem_checkpoint,
    write_v2_results,
)
from support.tiny_models import save_tiny_model
from tsfm_backend.checkpoints import CheckpointError, load_model, read_checkpoint
from tsfm_backend.cli import main
from tsfm_backend.models import fmunet, pctnet, suprem


def _import(capsys, *argv) -> str:
    assert main(["import", *map(str, argv)]) == 0
    return capsys.readouterr().out


def _same_output(model_id, original, x):
    loaded = load_model(model_id)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), original(x))
    return loaded


def test_our_own_format(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "m", classes={1: "tumour", 2: "oedema"})
    out = _import(capsys, folder, "--id", "copy")
    assert "format:        tsfm" in out and "classes:       tumour, oedema" in out
    assert load_model("copy").card.classes == {1: "tumour", 2: "oedema"}


def test_nnunet_v2(tmp_path, capsys):
    pools = [[2, 2, 2]] * 4 + [[1, 1, 1]]
    network = stunet_for("tiny", 2, pools, seed=1)
    path = write_v2_results(tmp_path / "STUNetTrainer_base__nnUNetPlans__3d_fullres", network, "STUNetTrainer_base",
                            {"tumour": 1})
    out = _import(capsys, path, "--id", "v2")
    assert "format:        nnunet_v2" in out and "spacing:       2.5 x 0.8 x 0.8 mm (z, y, x)" in out
    assert "normalization: ct_clip_zscore" in out
    _same_output("v2", network, torch.randn(1, 1, 32, 32, 32))


def test_pymic_pctnet_with_its_input_size(tmp_path, capsys):
    torch.manual_seed(2)
    network = pctnet.build(1, 5, "tiny")
    path = write_pymic_checkpoint(tmp_path / "pctnet_tiny_volf.pt", network)
    out = _import(capsys, path, "--id", "pct", "--arch", "input_size=[16,32,32]")
    assert "format:        pymic" in out and "family:        pctnet" in out and "patch:         16 x 32 x 32" in out
    loaded = _same_output("pct", network, torch.randn(1, 1, 16, 32, 32))
    assert loaded.card.classes[4] == "fusion_level_4"
    assert loaded.card.provenance["iteration"] == 80000


def test_pymic_pctnet_ct10k_layout_is_recognised_from_its_shapes():
    from tsfm_backend.formats.pymic import pctnet_architecture

    with torch.device("meta"):
        state_dict = pctnet.build(1, 5, "ct10k").state_dict()
    assert pctnet_architecture(state_dict) == {"in_chns": 1, "class_num": 5, "preset": "ct10k"}


def test_pymic_fmunet(tmp_path, capsys):
    torch.manual_seed(3)
    network = fmunet.build(1, 5, "tiny", res_mode=1)
    path = write_pymic_checkpoint(tmp_path / "fmunet_abk1k_volf.pt", network)
    out = _import(capsys, path)
    assert "imported 'fmunet_abk1k_volf'" in out and "family:        fmunet" in out
    loaded = _same_output("fmunet_abk1k_volf", network, torch.randn(1, 1, 8, 32, 32))
    assert loaded.card.architecture["res_mode"] == 1


def test_suprem_unet_universal_checkpoint_keeps_its_trained_32_class_head(tmp_path, capsys):
    from tsfm_backend.formats.suprem import UNIVERSAL_32

    torch.manual_seed(4)
    network = suprem.build("unet", 1, 32, head="universal")
    with torch.no_grad():
        network.organ_embedding.normal_()  # the CLIP text embeddings of the 32 classes
    path = write_suprem_checkpoint(tmp_path / "supervised_suprem_unet_2100.pth", network, universal=True)
    out = _import(capsys, path, "--id", "suprem-unet")
    assert "format:        suprem" in out and "license:       CC-BY-NC-ND-4.0" in out
    assert "classes:       spleen, kidney_right, kidney_left" in out and "head:" not in out
    loaded = _same_output("suprem-unet", network, torch.randn(1, 1, 16, 16, 16))
    card = loaded.card
    assert card.architecture == {"backbone": "unet", "in_channels": 1, "num_classes": 32, "head": "universal"}
    assert card.classes == dict(enumerate(UNIVERSAL_32, start=1)) and card.output == "sigmoid"
    assert card.head_trained and card.provenance["head"] == "from the checkpoint (Universal Model)"
    assert card.provenance["unused_keys"] == 0
    assert card.axis_order == "ras" and card.normalization == {"scheme": "hu_window", "lower": -175.0, "upper": 250.0,
                                                               "after_resampling": True}


def test_suprem_segresnet_bare_checkpoint_with_its_25_class_head(tmp_path, capsys):
    torch.manual_seed(5)
    network = suprem.build("segresnet", 1, 25)
    path = write_suprem_checkpoint(tmp_path / "supervised_suprem_segresnet_2100.pth", network, universal=False)
    _import(capsys, path)
    loaded = _same_output("supervised_suprem_segresnet_2100", network, torch.randn(1, 1, 16, 16, 16))
    assert loaded.card.output == "sigmoid" and loaded.card.classes[5] == "liver" and len(loaded.card.classes) == 25
    assert loaded.card.provenance["head"] == "from the checkpoint"


def test_suprem_checkpoint_missing_backbone_weights_names_them(tmp_path):
    network = suprem.build("unet", 1, 32, head="universal")
    path = write_suprem_checkpoint(tmp_path / "broken.pth", network, universal=True)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["net"]["module.backbone.down_tr128.ops.0.conv1.weight"]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="down_tr128.ops.0.conv1.weight"):
        read_checkpoint(path)


def test_unknown_torch_layout_is_named(tmp_path, capsys):
    path = tmp_path / "mystery.pth"
    torch.save({"weights": {}, "step": 1}, path)
    assert main(["import", str(path)]) == 2
    assert "no known checkpoint layout (top level: ['step', 'weights'])" in capsys.readouterr().err


def test_3dsam_adapter_layout_is_handed_to_the_promptable_family(tmp_path, capsys):
    from tsfm_backend.models import sam3d

    torch.manual_seed(6)
    network = sam3d.build(**sam3d.PRESETS["tiny"]).eval()
    encoder = dict(network.image_encoder.state_dict())
    for index, block in enumerate(network.image_encoder.blocks):
        if block.attn_mask is not None:
            encoder[f"blocks.{index}.attn_mask"] = block.attn_mask.clone()
    prompt = dict(network.prompt_encoder.state_dict())
    path = tmp_path / "best.pth.tar"
    torch.save({"epoch": 500, "encoder_dict": encoder, "decoder_dict": dict(network.mask_decoder.state_dict()),
                "feature_dict": [prompt] * 4}, path)
    out = _import(capsys, path, "--id", "sam-tiny", "--dataset", "kits")
    assert "format:        sam3d" in out and "family:        sam3d" in out
    loaded = load_model("sam-tiny")
    assert loaded.card.kind == "promptable" and loaded.card.classes == {1: "kidney tumor"}
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
