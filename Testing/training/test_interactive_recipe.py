"""The ``interactive`` recipe end to end on real sarcoma CT: train a few steps, export, evaluate, reload."""

from __future__ import annotations

import numpy as np
import torch
from tsfm_backend.checkpoints import load_model
from tsfm_training.config import apply_overrides, load_config
from tsfm_training.recipes import interactive


def test_recipe_trains_exports_and_measures(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TSFM_SHARED_DATA", str(shared_data))
    cases = tmp_path / "sts"
    cases.mkdir()
    for name in ("STS_002", "STS_025", "STS_041"):
        (cases / name).symlink_to(shared_data / "sts" / name)
    config = apply_overrides(load_config("interactive_default"), [
        f"data.root={cases}", "data.validation_cases=[STS_025]",
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
