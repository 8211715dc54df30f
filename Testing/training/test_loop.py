"""The training loop: schedules, optimisation, NaN guard, TensorBoard, and exact resume after a crash or a kill."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from tsfm_training.loop import LoopConfig, TrainingDiverged, fit, lr_factor

REPO = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    """Tiny conv net with dropout, so resume must restore the torch generator too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.drop = nn.Dropout3d(0.3)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(nn.functional.leaky_relu(self.conv(x), 0.1)))


def random_batches():
    """Lazy batches from the global numpy and torch generators: a restored RNG reproduces them."""
    while True:
        image = torch.from_numpy(np.random.rand(2, 1, 6, 6, 6).astype(np.float32) - 0.5)
        image = image + 0.1 * torch.randn_like(image)
        yield {"image": image, "label": (image[:, 0] > 0).long()}


def ce_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["image"]), batch["label"])


def config(tmp_path: Path, **overrides) -> LoopConfig:
    values = dict(steps=12, lr=0.05, optimizer="sgd", weight_decay=1e-4, schedule="poly", warmup_steps=2,
                  grad_clip=12.0, amp=False, checkpoint_every=3, log_every=2, output_dir=tmp_path / "run",
                  seed=7, device="cpu", progress=False)
    values.update(overrides)
    return LoopConfig(**values)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_schedules_follow_their_formulas(tmp_path):
    poly = config(tmp_path, steps=100, warmup_steps=0, schedule="poly")
    assert lr_factor(0, poly) == 1.0
    assert lr_factor(50, poly) == pytest.approx(0.5**0.9)
    cosine = config(tmp_path, steps=110, warmup_steps=10, schedule="cosine")
    assert [lr_factor(s, cosine) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(60, cosine) == pytest.approx(0.5)
    assert lr_factor(109, cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_factor(5, config(tmp_path, schedule="constant", warmup_steps=0)) == 1.0
    step = config(tmp_path, steps=100, schedule="step", step_every=20, step_gamma=0.5, warmup_steps=0)
    assert [lr_factor(s, step) for s in (0, 19, 20, 45, 99)] == [1.0, 1.0, 0.5, 0.25, 0.0625]


@pytest.mark.parametrize("field, value, words", [
    ("optimizer", "rmsprop", "optimizer"), ("schedule", "step", "schedule"), ("steps", 0, "steps"),
    ("warmup_steps", 12, "warmup_steps"), ("grad_clip", -1.0, "grad_clip"), ("schedule", "step", "step_every"),
])
def test_bad_settings_are_named(tmp_path, field, value, words):
    with pytest.raises(ValueError, match=words):
        config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match="unknown loop settings.*'epochs'"):
        LoopConfig.from_dict({"steps": 3, "epochs": 4})


def test_fit_learns_and_writes_checkpoint_and_tensorboard(tmp_path):
    torch.manual_seed(0)
    model = Net()
    batches = random_batches()
    with torch.no_grad():
        first = float(ce_loss(model.eval(), next(batches)))
    seen: list[int] = []

    def validate(net: nn.Module, step: int) -> dict[str, float]:
        seen.append(step)
        assert not net.training
        return {"loss": float(ce_loss(net, next(random_batches())))}

    result = fit(model, batches, ce_loss, config(tmp_path, steps=60, optimizer="adam", lr=0.03,
                                                 validate_every=30, warmup_steps=0), validate=validate)
    assert result["step"] == 60 and result["skipped_steps"] == 0 and result["resumed_from"] == 0
    assert result["loss"] < 0.8 * first
    assert seen == [30, 60] and result["validation"]["loss"] < 0.5 * first
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 60 and set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train/loss", "train/lr", "val/loss"} <= set(accumulator.Tags()["scalars"])
    lrs = [e.value for e in accumulator.Scalars("train/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-3


def test_parameters_restrict_what_is_trained(tmp_path):
    torch.manual_seed(0)
    model = Net()
    before = weights(model)
    fit(model, random_batches(), ce_loss, config(tmp_path, steps=3), parameters=model.head.parameters())
    after = weights(model)
    assert torch.equal(before["conv.weight"], after["conv.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_gradient_clipping_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    big = ({"x": torch.full((4, 3), 1e3), "y": torch.zeros(4, 1)} for _ in range(1))
    cfg = config(tmp_path, steps=1, lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                 warmup_steps=0, grad_clip=0.5, schedule="constant")
    fit(model, big, lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(), cfg)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.5, rel=1e-4)


def test_nan_steps_are_skipped_then_abort(tmp_path):
    torch.manual_seed(0)
    model = Net()
    calls = {"n": 0}

    def sometimes_nan(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        loss = ce_loss(m, b)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    result = fit(model, random_batches(), sometimes_nan, config(tmp_path, steps=6))
    assert result["skipped_steps"] == 2 and math.isfinite(result["loss"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

    with pytest.raises(TrainingDiverged, match="4 consecutive non-finite steps"):
        fit(Net(), random_batches(), lambda m, b: ce_loss(m, b) * float("inf"),
            config(tmp_path, output_dir=tmp_path / "diverged", max_nonfinite_steps=4))


def test_resume_after_a_crash_is_exact(tmp_path):
    torch.manual_seed(0)
    reference = Net()
    initial = weights(reference)
    fit(reference, random_batches(), ce_loss, config(tmp_path, output_dir=tmp_path / "whole"))

    crashed = Net()
    crashed.load_state_dict(initial)
    calls = {"n": 0}

    def crash_at_step_8(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return ce_loss(m, b)

    with pytest.raises(KeyboardInterrupt):
        fit(crashed, random_batches(), crash_at_step_8, config(tmp_path, output_dir=tmp_path / "split"))
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["step"] == 6

    # A fresh process would rebuild everything from scratch; do the same here, with other global RNG state.
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = Net()
    result = fit(resumed, random_batches(), ce_loss, config(tmp_path, output_dir=tmp_path / "split"))
    assert result["resumed_from"] == 6
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {testdir!r})
    from test_loop import Net, random_batches, ce_loss, config
    from pathlib import Path
    torch.set_num_threads(1)
    torch.manual_seed(0)
    slow = len(sys.argv) > 2
    def loss(m, b):
        if slow:
            time.sleep(0.3)
        return ce_loss(m, b)
    model = Net()
    fit_config = config(Path(sys.argv[1]), output_dir=Path(sys.argv[1]), checkpoint_every=2)
    from tsfm_training.loop import fit
    fit(model, random_batches(), loss, fit_config)
    torch.save(model.state_dict(), Path(sys.argv[1]) / "final.pt")
""")


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(testdir=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "training"), str(REPO / "Backend")])}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(whole)], check=True, env=env, timeout=120)

    process = subprocess.Popen([sys.executable, str(script), str(killed), "slow"], env=env)
    deadline = time.monotonic() + 90
    while not (killed / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    step = torch.load(killed / "last.pt", weights_only=True)["step"]
    assert 2 <= step < 12 and not (killed / "final.pt").exists()

    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env, timeout=120)
    expected = torch.load(whole / "final.pt", weights_only=True)
    got = torch.load(killed / "final.pt", weights_only=True)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_mixed_precision_on_the_cpu_uses_bfloat16_only_where_the_cpu_computes_it(tmp_path, monkeypatch,
                                                                                native_bf16, expected):
    """bf16 autocast on a CPU without bf16 instructions is emulated and many times slower than float32."""
    import tsfm_backend.device

    monkeypatch.setattr(tsfm_backend.device, "cpu_has_native_bf16", lambda: native_bf16)
    seen: list[torch.dtype] = []

    def loss_with_dtype(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = m(b["image"])
        seen.append(logits.dtype)
        return nn.functional.cross_entropy(logits.float(), b["label"])

    torch.manual_seed(0)
    result = fit(Net(), random_batches(), loss_with_dtype, config(tmp_path, steps=2, warmup_steps=0, amp=True))
    assert seen == [expected, expected] and math.isfinite(result["loss"])
