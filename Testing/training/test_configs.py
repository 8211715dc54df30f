"""Bundled configs: each published recipe is valid and has a smoke variant; the smoke variants train,
export a model the backend loads, and the CLI reports problems by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tsfm_backend.checkpoints import load_model
from tsfm_training.cli import main
from tsfm_training.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    deep_merge,
    load_config,
    recipe_module,
)
from tsfm_training.loop import LoopConfig
from tsfm_training.networks import card_from_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["stunet_s_totalseg", "stunet_b_totalseg", "stunet_l_totalseg", "stunet_h_totalseg", "tsfm_pool_pretrain",
           "pctnet_volf_pretrain", "suprem_pretrain", "sam3d_adapter_finetune"]
SMOKE_RUNS = ["stunet_s_totalseg_smoke", "stunet_h_totalseg_smoke", "tsfm_pool_pretrain_smoke",
              "pctnet_volf_pretrain_smoke", "suprem_pretrain_smoke", "sam3d_adapter_finetune_smoke"]


@pytest.mark.parametrize("name", RECIPES + [f"{n}_smoke" for n in RECIPES])
def test_config_is_valid(name):
    config = load_config(name)
    recipe_module(config)
    LoopConfig.from_dict({**config["loop"], "output_dir": "x"})
    card = card_from_config(config["model"])
    assert card.num_classes >= 2 or card.output == "sigmoid"
    assert (CONFIG_DIR / f"{name.removesuffix('_smoke')}_smoke.yaml").is_file()


def test_published_hyper_parameters_survive_in_the_configs():
    stunet = load_config("stunet_h_totalseg")
    assert stunet["loop"]["lr"] == 0.01 and stunet["loop"]["momentum"] == 0.99 and stunet["loop"]["grad_clip"] == 12
    assert stunet["model"]["architecture"]["preset"] == "H" and len(stunet["model"]["classes"]) == 104
    assert stunet["distributed"] == {"strategy": "fsdp", "activation_checkpointing": True}
    volf = load_config("pctnet_volf_pretrain")["volume_fusion"]
    assert volf["num_classes"] == 5 and volf["foreground_ratio"] == 0.7
    sam = load_config("sam3d_adapter_finetune")
    assert sam["loop"]["lr"] == 4e-4 and sam["prompts"] == {"positive": 10, "random": 20}


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE_RUNS)
def test_smoke_variant_trains_and_exports(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # configs name ../shared/data relative to the repository root
    assert main(["run", name, "--set", f"output_dir={tmp_path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    loaded = load_model(result["model"])
    assert loaded.card.id == load_config(name)["model"]["id"]
    assert result["train"]["step"] == load_config(name)["loop"]["steps"]
    assert (tmp_path / "train" / "last.pt").is_file()


def test_merge_and_overrides():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}}
    merged = deep_merge(base, {"a": {"c": [3]}, "d!": {"f": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": {"f": 2}}
    assert apply_overrides(base, ["a.b=2e-3", "x.y=[1, 2]", "d.e=null"]) == {
        "a": {"b": 0.002, "c": [1, 2]}, "d": {"e": None}, "x": {"y": [1, 2]}}
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides(base, ["a.b"])
    with pytest.raises(ConfigError, match="'b' is a int, not a section"):
        apply_overrides(base, ["a.b.c=1"])


def test_cli_reports_problems_by_name(tmp_path, capsys):
    assert main(["run", "no_such_config"]) == 2
    assert "config 'no_such_config' not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"recipe": "telepathy"}))
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown recipe 'telepathy'" in capsys.readouterr().err
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({"extends": "loop.yaml"}))
    assert main(["run", str(tmp_path / "loop.yaml")]) == 2
    assert "extends itself" in capsys.readouterr().err
    assert main(["run", "sts_finetune", "--print-config", "--set", "loop.steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["loop"]["steps"] == 7 and printed["recipe"] == "supervised"
    assert main(["evaluate", str(tmp_path), str(tmp_path), "--output", str(tmp_path / "o"), "--classes", "x"]) == 2
    assert "--classes item 'x'" in capsys.readouterr().err


@pytest.mark.slow
def test_supervised_recipe_holds_out_scores_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    shrink = ["--set", f"output_dir={tmp_path}", "--set", "data.cache=null", "--set", "data.max_cases=2",
              "--set", "data.validation=[STS_005]", "--set", "loop.steps=2", "--set", "loop.checkpoint_every=0",
              "--set", "model.architecture.dims=[4, 8, 8, 16, 16, 16]", "--set", "model.spacing=[6.0, 4.0, 4.0]",
              "--set", "model.patch_size=[16, 32, 32]",
              "--set", "model.architecture.pool_op_kernel_sizes=[[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 1, 1]]"]
    assert main(["run", "sts_finetune", *shrink]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["evaluation"]["cases"] == 1 and 0.0 <= result["evaluation"]["mean_dice"] <= 1.0
    rows = (tmp_path / "evaluation" / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("STS_005,1,tumour,")
    card = load_model(result["model"]).card
    assert card.provenance["validation_cases"] == ["STS_005"] and card.provenance["training_cases"] == 2

    assert main(["run", "sts_finetune", *shrink]) == 0  # a second run resumes at the end and re-exports
    assert json.loads(capsys.readouterr().out)["train"]["resumed_from"] == 2


def test_shared_data_paths_follow_the_shared_data_folder(tmp_path, monkeypatch):
    from tsfm_training.config import locate_shared_data

    monkeypatch.setenv("TSFM_SHARED_DATA", str(tmp_path / "elsewhere" / "data"))
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)  # no ../shared/data beside it
    config = {"data": {"root": "../shared/data/sts", "cases": [{"image": "../shared/data/totalseg/ct.nii.gz"}]},
              "other": "../shared/elsewhere", "steps": 3}
    located = locate_shared_data(config)
    assert located["data"]["root"] == str(tmp_path / "elsewhere" / "data" / "sts")
    assert located["data"]["cases"][0]["image"] == str(tmp_path / "elsewhere" / "data" / "totalseg" / "ct.nii.gz")
    assert located["other"] == "../shared/elsewhere" and located["steps"] == 3
    assert config["data"]["root"] == "../shared/data/sts"  # the input is not changed
    (tmp_path / "shared" / "data" / "sts").mkdir(parents=True)
    assert locate_shared_data(config)["data"]["root"] == "../shared/data/sts"  # found from here: kept
