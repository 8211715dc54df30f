"""The fine-tuning recipes as their authors publish them (STU-Net, SuPreM, PCT-Net, TSFM transfer) and the
SuPreM / TSFM pool pretraining configs: published numbers survive in the configs, and each smoke variant
fine-tunes the model its pretraining smoke variant exported, through the store and DataLoader path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tsfm_backend.checkpoints import load_model
from tsfm_training.cli import main
from tsfm_training.config import load_config, recipe_module
from tsfm_training.loop import LoopConfig
from tsfm_training.networks import card_from_config

REPO = Path(__file__).resolve().parents[2]
FINETUNES = ["stunet_finetune", "suprem_finetune", "pctnet_finetune", "tsfm_transfer", "tsfm_transfer_10pct"]
NNUNET_STEPS = 1000 * 250  # nnU-Net's 1000 epochs of 250 iterations


@pytest.mark.parametrize("name", FINETUNES + [f"{n}_smoke" for n in FINETUNES])
def test_config_is_valid_and_says_where_its_numbers_come_from(name):
    config = load_config(name)
    recipe_module(config)
    LoopConfig.from_dict({**config["loop"], "output_dir": "x"})
    card_from_config(config["model"])
    assert (REPO / "training" / "configs" / f"{name}.yaml").read_text().startswith("#")


def test_published_fine_tuning_numbers():
    stunet = load_config("stunet_finetune")
    assert stunet["loop"]["lr"] == 1e-3 and stunet["loop"]["optimizer"] == "sgd" and stunet["loop"]["momentum"] == 0.99
    assert stunet["loop"]["steps"] == NNUNET_STEPS and stunet["init"]["new_head"] is True
    suprem = load_config("suprem_finetune")
    assert (suprem["loop"]["optimizer"], suprem["loop"]["lr"], suprem["loop"]["weight_decay"]) == ("adamw", 1e-4, 1e-5)
    assert suprem["loop"]["warmup_steps"] * 201 == pytest.approx(suprem["loop"]["steps"] * 20, rel=1e-3)
    assert suprem["model"]["normalization"] == {"scheme": "hu_window", "lower": -250.0, "upper": 250.0}
    assert len(suprem["model"]["classes"]) == 17 and suprem["data"]["class_first"] is False
    pctnet = load_config("pctnet_finetune")
    assert (pctnet["loop"]["optimizer"], pctnet["loop"]["lr"], pctnet["loop"]["poly_power"], pctnet["loop"]["steps"]) \
        == ("adam", 1e-3, 0.8, 6000)
    assert pctnet["objective"]["ce_weight"] == pctnet["objective"]["dice_weight"] == 0.5
    assert load_config("tsfm_transfer")["loop"]["steps"] == 0.05 * NNUNET_STEPS
    assert load_config("tsfm_transfer_10pct")["loop"]["steps"] == 0.10 * NNUNET_STEPS


def test_pretraining_configs_use_the_authors_objectives_and_the_papers_pool():
    suprem = load_config("suprem_pretrain")
    assert suprem["objective"]["name"] == "suprem" and suprem["data"]["datasets"][0]["format"] == "masks"
    assert load_config("suprem_pretrain_smoke")["objective"]["name"] == "suprem"
    pool = load_config("tsfm_pool_pretrain")
    names = [d["name"] for d in pool["data"]["datasets"]]
    assert len(names) == 10 and set(names) == set(pool["data"]["pool"]["remap"])
    classes = pool["data"]["pool"]["classes"]
    assert classes == pool["model"]["classes"] and len(set(classes.values())) == len(classes)
    assert {"liver tumour (LiTS)", "liver tumour (HCC)", "kidney (both sides)", "left kidney"} <= set(classes.values())
    targets = [t for table in pool["data"]["pool"]["remap"].values() for t in table.values()]
    assert set(targets) == set(classes), "every pool class is taught by some dataset"


def _run(name: str, output: Path, capsys, *overrides: str) -> dict:
    assert main(["run", name, "--set", f"output_dir={output}", *[a for o in overrides for a in ("--set", o)]]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("pretraining, finetuning", [
    ("stunet_s_totalseg_smoke", "stunet_finetune_smoke"),
    ("suprem_pretrain_smoke", "suprem_finetune_smoke"),
    ("pctnet_volf_pretrain_smoke", "pctnet_finetune_smoke"),
    ("tsfm_pool_pretrain_smoke", "tsfm_transfer_smoke"),
])
def test_smoke_fine_tuning_starts_from_the_pretraining_smoke_model(pretraining, finetuning, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(REPO)  # configs name ../shared/data relative to the repository root
    pretrained = _run(pretraining, tmp_path / "pretrain", capsys)["model"]
    result = _run(finetuning, tmp_path / "finetune", capsys, f"init.checkpoint={pretrained}")
    init = result["init"]
    assert init["loaded"] > 0 and init["missing"] == 0
    assert init["new_head"] > 0 or init.get("reinitialised_head", 0) > 0
    assert result["train"]["step"] == load_config(finetuning)["loop"]["steps"]
    assert load_model(result["model"]).card.id == load_config(finetuning)["model"]["id"]
    assert list((tmp_path / "finetune" / "store").rglob("image.npy")), "cases went through the store"
