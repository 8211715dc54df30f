"""The authors' checkpoint layout: strict loading by their key names, the model card, safe loading only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tsfm_backend.checkpoints import CheckpointError, load_model, save_model
from tsfm_backend.formats.safe_unpickler import torch_load
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models.sam3d import (
    PRESETS,
    convert_official_checkpoint,
    from_official_checkpoint,
    is_official_checkpoint,
    match_preset,
)
from tsfm_backend.models.sam3d.official import official_shapes

SOURCES = Path(__file__).resolve().parents[3] / "Backend" / "tsfm_backend"


def _load(path: Path) -> dict:
    """The backend's safe reader: ``torch.load(weights_only=True)`` allowing numpy scalars only."""
    return torch_load(path)


def _logits(network, crop, points):
    with torch.no_grad():
        return network(crop, points)


def test_official_file_loads_with_every_weight(tiny_network, write_official):
    path = write_official(tiny_network)
    network, card = from_official_checkpoint(_load(path), dataset="kits")
    reference = tiny_network.state_dict()
    loaded = network.state_dict()
    assert set(loaded) == set(reference)
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    crop, points = torch.randn(1, 3, 32, 32, 32), torch.tensor([[[10, 12, 14]]])
    assert torch.allclose(_logits(network, crop, points), _logits(tiny_network, crop, points))
    assert not network.training


def test_card_records_the_published_preprocessing(tiny_network, write_official):
    _, card = from_official_checkpoint(_load(write_official(tiny_network)), dataset="kits")
    assert card.family == "sam3d" and card.kind == "promptable" and card.id == "sam3d-kits"
    assert card.spacing == (1.0, 1.0, 1.0) and card.axis_order == "kji" and card.in_channels == 3
    assert card.patch_size == (32, 32, 32)  # the crop of the tiny preset; 128 for ViT-B
    assert card.normalization == {
        "scheme": "ct_clip_zscore",
        "lower": -54.0,
        "upper": 247.0,
        "mean": 59.53867,
        "std": 55.457336,
    }
    assert card.classes == {1: "kidney tumor"} and card.output == "softmax" and card.num_classes == 2
    assert card.architecture == PRESETS["tiny"]
    assert card.provenance["epoch"] == 500 and card.provenance["preset"] == "tiny"
    assert (
        card.provenance["best_val_loss"] == pytest.approx(0.2125)
        and type(card.provenance["best_val_loss"]) is float
    )
    assert ModelCard.from_json(card.to_json()) == card
    _, lits = from_official_checkpoint(
        _load(write_official(tiny_network)), dataset="lits", model_id="my-lits"
    )
    assert (
        lits.id == "my-lits" and lits.normalization["upper"] == 163.0 and lits.classes == {1: "liver tumor"}
    )
    with pytest.raises(CheckpointError, match="unknown 3DSAM-adapter dataset 'brats'"):
        from_official_checkpoint(_load(write_official(tiny_network)), dataset="brats")


def test_conversion_gives_our_keys_without_building(tiny_network, layout):
    checkpoint = layout(tiny_network)
    assert is_official_checkpoint(checkpoint) and not is_official_checkpoint({"state_dict": {}})
    state_dict, card = convert_official_checkpoint(checkpoint, dataset="kits", model_id="kits-tiny")
    assert set(state_dict) == set(tiny_network.state_dict()) and card.id == "kits-tiny"


def test_only_the_last_prompt_encoder_is_used(tiny_network, layout):
    checkpoint = layout(tiny_network)
    network, _ = from_official_checkpoint(checkpoint, dataset="kits")
    for key, value in checkpoint["feature_dict"][3].items():
        assert torch.equal(network.prompt_encoder.state_dict()[key], value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda c: c["encoder_dict"].pop("blocks.1.adapter.conv.weight"),
            "encoder_dict missing blocks.1.adapter.conv.weight",
        ),
        (lambda c: c["encoder_dict"].pop("blocks.2.attn_mask"), "encoder_dict missing blocks.2.attn_mask"),
        (
            lambda c: c["decoder_dict"].update({"cls.3.bias": torch.zeros(2)}),
            "decoder_dict unexpected cls.3.bias",
        ),
        (
            lambda c: c["encoder_dict"].update({"depth_embed": torch.ones(1, 16, 32)}),
            r"depth_embed \(1, 16, 32\) != \(1, 8, 32\)",
        ),
        (lambda c: c["feature_dict"][0].pop("transformer.layers.0.norm4.bias"), r"feature_dict\[0\] missing"),
    ],
)
def test_files_that_do_not_fit_are_refused_by_name(tiny_network, layout, damage, message):
    checkpoint = layout(tiny_network)
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        from_official_checkpoint(checkpoint, dataset="kits")


def test_malformed_layouts_are_refused(tiny_network, layout):
    checkpoint = layout(tiny_network)
    del checkpoint["decoder_dict"]
    with pytest.raises(CheckpointError, match="has no 'decoder_dict'"):
        from_official_checkpoint(checkpoint, dataset="kits")
    checkpoint = layout(tiny_network)
    checkpoint["feature_dict"] = checkpoint["feature_dict"][:3]
    with pytest.raises(CheckpointError, match="list of 4"):
        from_official_checkpoint(checkpoint, dataset="kits")


def test_vit_b_layout_is_recognised_from_shapes():
    checkpoint = {
        part: {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
        for part, shapes in official_shapes(PRESETS["vit_b"]).items()
    }
    checkpoint["feature_dict"] = [checkpoint["feature_dict"]] * 4
    assert match_preset(checkpoint) == "vit_b"


def test_round_trip_through_our_format(tiny_network, write_official, tmp_path):
    network, card = from_official_checkpoint(_load(write_official(tiny_network)), dataset="kits")
    folder = save_model(network, card, tmp_path / "sam3d-kits")
    loaded = load_model(folder)
    crop, points = torch.randn(1, 3, 32, 32, 32), torch.tensor([[[31, 0, 7]]])
    assert loaded.card == card
    assert torch.allclose(
        _logits(loaded.network, crop, points), _logits(tiny_network, crop, points), atol=1e-6
    )


def test_official_file_loads_through_load_model(tiny_network, write_official):
    path = write_official(tiny_network)
    try:
        loaded = load_model(path)
    except CheckpointError as error:
        if "no known checkpoint layout" in str(error) or "not a checkpoint format" in str(error):
            pytest.skip("this backend does not detect 3DSAM-adapter files yet")
        raise
    assert loaded.card.family == "sam3d"
    crop, points = torch.randn(1, 3, 32, 32, 32), torch.tensor([[[5, 6, 7]]])
    assert torch.allclose(
        _logits(loaded.network, crop, points), _logits(tiny_network, crop, points), atol=1e-6
    )


def test_no_unsafe_torch_load_in_sam3d_code():
    files = [
        *sorted((SOURCES / "models" / "sam3d").glob("*.py")),
        SOURCES / "inference" / "sam3d_predictor.py",
    ]
    for file in files:
        for call in re.findall(r"torch\.load\([^)]*\)", file.read_text()):
            assert "weights_only=True" in call, f"{file.name}: {call}"
