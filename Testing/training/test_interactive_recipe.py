"""The ``interactive`` recipe: end to end on real sarcoma CT (train, export, evaluate, reload), and self-play."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tsfm_backend.checkpoints import load_model
from tsfm_training.config import apply_overrides, load_config
from tsfm_training.recipes import interactive


def test_recipe_trains_exports_and_measures(shared_data, tmp_path):
    cases = shared_data / "sts"
    config = apply_overrides(load_config("interactive_default"), [
        f"data.root={cases}", "data.validation_cases=[STS_025]", "data.training_cases=[STS_041, STS_002]",
        "data.crop_sizes=[[32, 64, 64]]", "data.batch_sizes=[1]",
        "model.architecture.preset=tiny", "loop.steps=2", "loop.warmup_steps=0", "loop.progress=false",
        f"loop.output_dir={tmp_path / 'run'}", f"export.directory={tmp_path / 'model'}", "evaluation.clicks=2",
    ])
    result = interactive.run(config)
    assert result["loop"]["step"] == 2 and np.isfinite(result["loop"]["loss"])
    loaded = load_model(tmp_path / "model")
    card = loaded.card
    assert card.kind == "promptable" and card.provenance["data"]["validation_cases"] == ["STS_025"]
    assert sorted(card.provenance["data"]["training_cases"]) == ["STS_002", "STS_041"]
    metrics = card.provenance["metrics"]
    assert set(metrics["cases"]) == {"STS_025"} and len(metrics["cases"]["STS_025"]["dice"]) == 2
    assert 0.0 <= metrics["mean"]["dice_1"] <= 1.0
    assert len(card.provenance["commit"]) in (40, len("unknown"))
    assert torch.equal(loaded.network.state_dict()["seg_outputs.4.weight"],
                       dict(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"])["seg_outputs.4.weight"])

    # The self-play stage starts from that model; a model of another architecture is refused.
    stage_two = apply_overrides(load_config("interactive_selfplay"), [
        f"data.root={cases}", "data.validation_cases=[STS_025]", "data.training_cases=[STS_002]",
        "data.crop_sizes=[[32, 64, 64]]", "data.batch_sizes=[1]",
        "model.architecture.preset=tiny", "loop.steps=1", "loop.warmup_steps=0", "loop.progress=false",
        f"init.checkpoint={tmp_path / 'model'}", f"loop.output_dir={tmp_path / 'run2'}",
        f"export.directory={tmp_path / 'model2'}", "evaluation.clicks=1", "threads=1",
    ])
    interactive.run(stage_two)
    second = load_model(tmp_path / "model2").card.provenance
    assert second["init"]["loaded"] == len(loaded.network.state_dict()) and second["init"]["missing"] == 0
    assert second["command"] == "make interactive-model"
    assert second["config"]["simulation"]["iterative_probability"] > 0
    first_stage, second_stage = second["training"]["stages"]
    assert first_stage["output_dir"] == str(tmp_path / "run") and first_stage["steps"] == 2
    assert first_stage["metrics_mean"] == card.provenance["metrics"]["mean"]
    assert second_stage["output_dir"] == str(tmp_path / "run2") and second_stage["steps"] == 1
    assert "config" not in second_stage  # no bundled config is named after run2
    assert interactive.stage_record({"config": {"loop": {"output_dir": "out/runs/interactive_refine"}}})[
        "config"] == "training/configs/interactive_refine.yaml"
    mismatched = apply_overrides(stage_two, ["model.architecture.preset=small"])
    with pytest.raises(ValueError, match="shape|size"):
        interactive.run(mismatched)


def universal_config(shared_data, tmp_path, name: str, *more: str) -> dict:
    """The class-agnostic stage at test size: one training patient, no init model."""
    config = apply_overrides(load_config("interactive_universal"), [
        f"data.root={shared_data / 'sts'}", "data.validation_cases=[STS_025]", "data.training_cases=[STS_002]",
        f"data.totalseg.root={shared_data / 'totalseg'}", "data.pseudo_objects.per_volume=3",
        "data.crop_sizes=[[32, 64, 64]]", "data.batch_sizes=[1]", "model.architecture.preset=tiny",
        "loop.steps=2", "loop.warmup_steps=0", "loop.progress=false", "loop.amp=false", "threads=1",
        f"loop.output_dir={tmp_path / name}", f"export.directory={tmp_path / (name + '-model')}",
        "evaluation.clicks=2", "evaluation.organ_classes=[vertebrae_T12]", *more,
    ])
    config.pop("init")
    return config


def test_class_agnostic_stage_trains_on_every_kind_and_scores_each_group(shared_data, tmp_path):
    interactive.run(universal_config(shared_data, tmp_path, "a"))
    card = load_model(tmp_path / "a-model").card
    assert card.id == "universal-click-small" and card.normalization["scheme"] == "by_modality"
    data = card.provenance["data"]
    assert data["objects"]["tumour"] == 3 and data["objects"]["organ"] > 20 and data["objects"]["pseudo"] > 0
    assert "STS_002/pet" in data["volumes"] and not any("STS_025" in name for name in data["volumes"])
    metrics = card.provenance["metrics"]
    assert set(metrics["groups"]) == {"sarcoma CT", "sarcoma MR", "sarcoma PET", "organs (unseen classes)"}
    assert {"STS_025", "STS_025/mr_t1", "STS_025/pet", "vertebrae_T12@example_ct_sm"} <= set(metrics["cases"])
    assert metrics["worse_clicks"]["of"] == len(metrics["cases"])  # one click after the first, per object
    # The seed is set before the network is built: a rerun trains the same weights.
    interactive.run(universal_config(shared_data, tmp_path, "b", "evaluation.modalities=[ct]",
                                     "evaluation.organ_classes=[]"))
    first, second = load_model(tmp_path / "a-model").network.state_dict(), load_model(tmp_path / "b-model").network.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_training_cases_choose_a_subset_and_never_overlap_validation(tmp_path):
    names = ["STS_001", "STS_002", "STS_004", "STS_005"]
    assert interactive.split_cases(names, ["STS_005"], None, tmp_path) == (
        ["STS_001", "STS_002", "STS_004"], ["STS_005"])
    assert interactive.split_cases(names, ["STS_005"], ["STS_004", "STS_001"], tmp_path) == (
        ["STS_001", "STS_004"], ["STS_005"])
    with pytest.raises(ValueError, match=r"\['STS_005'\] are listed for both"):
        interactive.split_cases(names, ["STS_005"], ["STS_001", "STS_005"], tmp_path)
    with pytest.raises(ValueError, match=r"training cases \['STS_099'\] are not under"):
        interactive.split_cases(names, ["STS_005"], ["STS_099"], tmp_path)
    with pytest.raises(ValueError, match=r"validation cases \['STS_098'\] are not under"):
        interactive.split_cases(names, ["STS_098"], None, tmp_path)
    with pytest.raises(ValueError, match="must be a list of case names"):
        interactive.split_cases(names, ["STS_005"], "STS_001", tmp_path)
    with pytest.raises(ValueError, match="training_cases is empty"):
        interactive.split_cases(names, ["STS_005"], [], tmp_path)


class OverSegmenter(torch.nn.Module):
    """Predicts the whole first half of the crop along i, whatever the prompts; records grad mode per call."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        half = torch.zeros_like(x[:, :1])
        half[..., : x.shape[-1] // 2] = 1.0
        return 20.0 * (half - 0.5) + self.bias


def test_self_play_feeds_back_the_prediction_and_clicks_its_error():
    shape = (8, 16, 16)
    label = torch.zeros(3, 1, *shape)
    label[:, :, 2:6, 4:12, 2:6] = 1.0  # the object lies inside the predicted half: the error is extra
    image = torch.zeros(3, 5, *shape)
    image[:, 1, 4, 8, 4] = 1.0  # a first positive click
    model = OverSegmenter()
    rounds = torch.tensor([1, 0, 2])
    played = interactive.self_play(model, image, label, rounds, (3.0, 2.0, 2.0), 4.0, np.random.default_rng(0))
    assert model.grad_enabled == [False, False]  # two rounds for sample 2, one for sample 0, no gradient
    predicted = torch.zeros(shape)
    predicted[..., :8] = 1.0
    assert torch.equal(played[1], image[1])  # no rounds: untouched
    for index in (0, 2):
        assert torch.equal(played[index, 4], predicted)  # the prediction became the previous mask
        negative = played[index, 2].bool()
        assert negative.any() and not (negative & label[index, 0].bool()).any()  # clicked in the extra part
        assert torch.equal(played[index, 1], image[index, 1])  # no positive click was added
    assert int(played[2, 2].sum()) >= int(played[0, 2].sum())
    assert torch.equal(image[0, 4], torch.zeros(shape))  # the input batch itself is not modified

    loss = interactive.SelfCorrectingLoss((3.0, 2.0, 2.0), 4.0, seed=0)(
        model, {"image": image, "label": label, "rounds": rounds})
    loss.backward()
    assert model.grad_enabled[-1] and model.bias.grad is not None


def test_iterative_samples_start_as_first_interactions(shared_data):
    spacing = (3.0, 2.0, 2.0)
    case = interactive.load_case(shared_data / "sts" / "STS_002", spacing,
                                 {"scheme": "hu_window", "lower": -250.0, "upper": 350.0})
    simulation = interactive.SimulationConfig(iterative_probability=1.0, correction_probability=1.0)
    batches = interactive.ClickBatches([case], spacing, 5.0, [(16, 32, 32)], [4], simulation, seed=0)
    batch = next(batches)
    assert batch["image"].shape == (4, 5, 16, 32, 32) and batch["label"].shape == (4, 1, 16, 32, 32)
    assert ((batch["rounds"] >= 1) & (batch["rounds"] <= 3)).all()
    assert batch["image"][:, 4].sum() == 0 and batch["image"][:, 2].sum() == 0  # no previous mask, no negatives


def test_data_root_finds_the_shared_data_and_names_a_missing_folder(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TSFM_SHARED_DATA", str(shared_data))
    monkeypatch.chdir(tmp_path)  # where ../shared/data does not exist
    assert interactive.data_root("../shared/data/sts") == shared_data / "sts"
    with pytest.raises(ValueError, match="nowhere"):
        interactive.data_root(str(tmp_path / "nowhere"))
