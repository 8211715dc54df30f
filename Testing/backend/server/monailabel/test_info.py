"""``/info/`` entries from model cards: types the plugin's combos take, labels as 1..N positions."""

from __future__ import annotations

from tsfm_backend.model_card import ModelCard
from tsfm_backend.server.monailabel.info import CLICKS_SUFFIX, app_info


def _card(model_id: str, family: str, kind: str, classes: dict[int, str]) -> ModelCard:
    return ModelCard(id=model_id, family=family, architecture={}, kind=kind, classes=classes,
                     patch_size=(16, 16, 16), description=f"{model_id} for tests")


def test_an_automatic_model_that_takes_clicks_is_listed_twice_and_names_stay_unique() -> None:
    vista = _card("vista", "vista3d", "automatic", {1: "liver", 2: "liver", 5: "kidney"})
    click = _card("clicker", "click_unet", "promptable", {1: "object"})
    info = app_info([click, vista], images=3, version="1.0")
    assert list(info["models"]) == ["clicker", "vista", "vista" + CLICKS_SUFFIX]
    assert info["models"]["vista"]["type"] == "segmentation"
    assert info["models"]["vista"]["labels"] == {"liver (1)": 1, "liver (2)": 2, "kidney": 3}
    assert info["models"]["vista" + CLICKS_SUFFIX]["type"] == "deepgrow"
    assert info["models"]["clicker"] == {"type": "deepgrow", "labels": [], "dimension": 3, "config": {},
                                         "description": "clicker for tests (click_unet, license unknown)"}
    assert info["labels"] == ["liver (1)", "liver (2)", "kidney"] and info["datastore"]["total"] == 3


def test_a_segmentation_only_model_has_no_click_entry() -> None:
    info = app_info([_card("stunet", "stunet", "automatic", {1: "spleen"})], images=0, version="1.0")
    assert list(info["models"]) == ["stunet"] and "config" not in info
