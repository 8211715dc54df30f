"""Our own format (safetensors + model card), the store and load_model by id or path."""

from __future__ import annotations

import json

import pytest
import torch
from support.tiny_models import save_tiny_model, tiny_card
from tsfm_backend import store
from tsfm_backend.checkpoints import CheckpointError, LoadedModel, UnknownModelError, load_model, save_model
from tsfm_backend.models import UnknownFamilyError, build_network
from tsfm_backend.store import installed_models, resolve_model, tsfm_home


@pytest.fixture
def no_bundled_models(tmp_path, monkeypatch):
    """The store alone: the package's bundled models are moved out of sight."""
    monkeypatch.setattr(store, "BUNDLED_MODELS", tmp_path / "no-bundled-models")


def test_save_then_load_gives_the_same_network(tmp_path):
    folder = save_tiny_model(tmp_path / "m", classes={1: "liver", 2: "tumour"}, seed=3)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_model(folder)
    assert isinstance(loaded, LoadedModel)
    assert loaded.card.classes == {1: "liver", 2: "tumour"}
    assert loaded.card.spacing == (3.0, 1.0, 1.0)
    assert not loaded.network.training
    torch.manual_seed(3)
    fresh = build_network(loaded.card)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), fresh(x))
        assert loaded.network(x).shape == (1, 3, 32, 32, 32)


def test_load_by_id_from_the_store(isolated_model_store, no_bundled_models):
    assert tsfm_home() == isolated_model_store
    save_tiny_model(isolated_model_store / "models" / "tiny-stunet")
    save_tiny_model(isolated_model_store / "models" / "other", model_id="other", classes={1: "a", 3: "c"})
    assert [card.id for card in installed_models()] == ["other", "tiny-stunet"]
    assert resolve_model("tiny-stunet") == isolated_model_store / "models" / "tiny-stunet"
    loaded = load_model("other")
    assert loaded.card.num_classes == 4


def test_bundled_models_are_listed_and_a_store_model_of_the_same_id_shadows_them(isolated_model_store, tmp_path,
                                                                                monkeypatch):
    bundled = tmp_path / "bundled"
    save_tiny_model(bundled / "shipped", model_id="shipped", classes={1: "a"})
    monkeypatch.setattr(store, "BUNDLED_MODELS", bundled)
    assert [card.id for card in installed_models()] == ["shipped"]
    assert resolve_model("shipped") == bundled / "shipped"
    save_tiny_model(isolated_model_store / "models" / "shipped", model_id="shipped", classes={1: "a", 2: "b"})
    assert resolve_model("shipped") == isolated_model_store / "models" / "shipped"
    assert [card.num_classes for card in installed_models()] == [3]


def test_unknown_id_names_the_store_and_the_available_models(isolated_model_store, no_bundled_models):
    save_tiny_model(isolated_model_store / "models" / "tiny-stunet")
    with pytest.raises(UnknownModelError, match="'nope'.*available: tiny-stunet"):
        load_model("nope")


def test_weights_that_do_not_fit_the_card_are_refused_with_the_key(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    card = json.loads((folder / "model.json").read_text())
    card["architecture"]["num_classes"] = 5
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"wrong shape: seg_outputs\.0\.weight \(2, 16, 1, 1, 1\)"):
        load_model(folder)


def test_save_model_refuses_a_network_that_is_not_the_cards(tmp_path):
    card = tiny_card()
    other = build_network(tiny_card(classes={1: "a", 2: "b"}))
    with pytest.raises(CheckpointError, match="seg_outputs"):
        save_model(other, card, tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_corrupt_weights_and_bad_cards_are_specific_errors(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_model(folder)
    folder = save_tiny_model(tmp_path / "n")
    card = json.loads((folder / "model.json").read_text())
    card["family"] = "unet9000"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(UnknownFamilyError, match="unknown model family 'unet9000'"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="no model.json/model.safetensors, checkpoint_final.pth or .model"):
        load_model(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a checkpoint format"):
        load_model(tmp_path / "notes.txt")


def test_loading_onto_a_device_and_the_empty_store(tmp_path, no_bundled_models):
    assert installed_models() == []
    loaded = load_model(save_tiny_model(tmp_path / "m"), device="cpu")
    assert next(loaded.network.parameters()).device.type == "cpu"
