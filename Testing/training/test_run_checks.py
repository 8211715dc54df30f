"""What a run checks and records around the step: the global batch, refusals under torchrun that would
train something else than the config says, validation cadence, the saved config, TensorBoard after a
resume, and that only rank 0 reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from tsfm_training.distributed import (
    DistInfo,
    DistributedSetupError,
    per_rank_batch,
    refuse_fsdp,
    sum_over_ranks,
    wrap,
)
from tsfm_training.loop import LoopConfig, batch_per_rank, fit

sys.path.insert(0, str(Path(__file__).parent))
from test_loop import Net, ce_loss, config, random_batches  # noqa: E402


def test_the_global_batch_is_split_over_the_ranks_or_refused(caplog):
    assert per_rank_batch(8, 4) == 2 and per_rank_batch(2, 1) == 2
    with pytest.raises(DistributedSetupError, match="global batch 3 does not divide over 2 ranks"):
        per_rank_batch(3, 2)
    loop = LoopConfig(steps=10, lr=0.01)
    caplog.set_level("INFO", logger="tsfm_training.loop")
    assert batch_per_rank(loop, 2, 1) == 2 and loop.global_batch_size == 2
    assert "global batch 2 = 1 ranks x 2" in caplog.text
    explicit = LoopConfig(steps=10, global_batch_size=16)
    assert batch_per_rank(explicit, 2, 8) == 2  # loop.global_batch_size wins over the recipe's batch


def test_outside_a_process_group_sums_are_the_tensors_themselves():
    tp = torch.tensor([1.0, 2.0])
    assert sum_over_ranks(tp)[0] is tp


def test_strategy_none_under_torchrun_is_refused():
    with pytest.raises(DistributedSetupError, match="each would train its own model"):
        wrap(Net(), DistInfo(rank=0, world_size=2, device="cpu"), "none")


def test_fsdp_names_why_it_cannot_shard_sam3d_and_pctnet():
    from tsfm_backend.models import family_module

    with torch.device("meta"):
        sam3d = family_module("sam3d").build(**family_module("sam3d").PRESETS["tiny"])
    with pytest.raises(DistributedSetupError, match=r"Sam3D: it has 0-dimensional parameters \(.*attn.lr"):
        refuse_fsdp(sam3d)
    with pytest.raises(DistributedSetupError, match="PCTNet: its prediction heads are run piece by piece"):
        refuse_fsdp(family_module("pctnet").build(preset="tiny"))
    refuse_fsdp(Net())  # a network of whole stages shards


def test_the_interactive_recipe_refuses_torchrun(monkeypatch):
    from tsfm_training.recipes import interactive

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="recipe 'interactive' does not support torchrun"):
        interactive.run({"data": {}, "loop": {}})


def test_validate_every_without_a_validation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="loop.validate_every is set but this recipe has no validation"):
        fit(Net(), random_batches(), ce_loss, config(tmp_path, validate_every=2))


def test_the_run_config_is_saved_beside_the_checkpoint(tmp_path):
    run_config = {"recipe": "supervised", "loop": {"steps": 2}, "output_dir": tmp_path}
    fit(Net(), random_batches(), ce_loss, config(tmp_path, steps=2, warmup_steps=0), run_config=run_config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == {"recipe": "supervised", "loop": {"steps": 2}, "output_dir": str(tmp_path)}
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_resumed_run_logs_every_step_exactly_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls = {"n": 0}

    def crash_at_step_8(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return ce_loss(m, b)

    settings = dict(log_every=1, checkpoint_every=3, steps=12)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(Net(), random_batches(), crash_at_step_8, config(tmp_path, **settings))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 6
    fit(Net(), random_batches(), ce_loss, config(tmp_path, **settings))
    accumulator = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    accumulator.Reload()
    for tag in ("train/loss", "train/lr"):
        assert [e.step for e in accumulator.Scalars(tag)] == list(range(1, 13)), tag


def test_only_rank_0_prints_the_result(monkeypatch, capsys):
    import tsfm_training.config
    from tsfm_training.cli import main

    class Recipe:
        @staticmethod
        def run(config):
            return {"done": True}

    monkeypatch.setattr(tsfm_training.config, "recipe_module", lambda config: Recipe)
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "sts_finetune"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "sts_finetune"]) == 0
    assert json.loads(capsys.readouterr().out) == {"done": True}
