"""Distributed runs that stop and resume: two torchrun processes on the CPU (gloo).

A stopped FSDP run resumes bit-exactly, although one head (deep-supervision weight 0) never gets
optimiser state; a checkpoint written without FSDP resumes under FSDP; nodes that do not share the output
folder are stopped before they train; batch Dice is the Dice of every rank's batch together; each rank
draws its own random numbers from identical initial weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from tsfm_training.loop import LoopConfig, fit

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {testdir!r})
    from test_distributed_resume import DeepSupervised, rank_batches, loop_config, loss_fn
    from tsfm_training import distributed
    from tsfm_training.loop import fit, unwrap
    from tsfm_training.training_state import seed_everything

    torch.set_num_threads(1)
    out, strategy, stop_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    info = distributed.setup("cpu")
    seed_everything(3)  # the recipes build the network from loop.seed, the same on every rank
    network = DeepSupervised(float(os.environ.get("DROPOUT", "0.2")))
    initial = {{k: v.clone() for k, v in network.state_dict().items()}}
    model = distributed.wrap(network, info, strategy)
    run_dir = out / (f"node{{info.rank}}" if os.environ.get("UNSHARED") else "run")
    draws, calls = [], [0]

    def counted(m, b):
        calls[0] += 1
        if calls[0] == stop_at:
            os._exit(1)  # as a kill: no clean-up, no checkpoint
        draws.append(float(torch.rand(())))
        return loss_fn(m, b)

    fit(model, rank_batches(info.rank), counted, loop_config(run_dir))
    torch.save({{"initial": initial, "draws": draws}}, out / f"rank{{info.rank}}.pt")
    distributed.cleanup()
    # Leave without the interpreter's teardown: since the batch statistics are summed over ranks, a gloo
    # rank sometimes aborts there after its work is done ("terminate called without an active exception").
    os._exit(0)
""")


class DeepSupervised(nn.Module):
    """Two stages and two heads; only ``seg_outputs.0`` is scored (``seg_outputs.1`` has weight 0, as
    nnU-Net's lowest deep-supervision output), and dropout needs each rank's generator."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 4, 3, padding=1)])
        self.seg_outputs = nn.ModuleList([nn.Conv3d(4, 2, 1), nn.Conv3d(4, 2, 1)])
        self.drop = nn.Dropout3d(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        for stage in self.stages:
            x = torch.relu(stage(x))
        x = self.drop(x)
        return [head(x) for head in self.seg_outputs]


def rank_batches(rank: int):
    """Replayable batches: batch n of rank r depends on (r, n) only, as the recipes' samplers."""
    class Batches:
        def __init__(self) -> None:
            self.step = 0

        def __iter__(self):
            return self

        def __next__(self):
            generator = torch.Generator().manual_seed(1000 * rank + self.step)
            self.step += 1
            image = torch.randn(2, 1, 6, 6, 6, generator=generator)
            return {"image": image, "label": (image > 0.3).long()}

        def state_dict(self):
            return {"step": self.step}

        def load_state_dict(self, state):
            self.step = int(state["step"])

    return Batches()


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from tsfm_training.objectives.supervised import DeepSupervisionLoss, DiceCELoss

    return DeepSupervisionLoss(DiceCELoss(), [1.0, 0.0])(model(batch["image"]), batch["label"])


def loop_config(output_dir: Path) -> LoopConfig:
    return LoopConfig(steps=6, lr=0.02, optimizer="sgd", momentum=0.99, weight_decay=3e-5, schedule="poly",
                      checkpoint_every=2, log_every=1, output_dir=output_dir, device="cpu", progress=False, seed=3)


def torchrun(tmp_path: Path, out: Path, strategy: str, stop_at: int = 0, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(testdir=str(Path(__file__).parent)))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env,
                   "PYTHONPATH": os.pathsep.join([str(REPO / "training"), str(REPO / "Backend")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out), strategy, str(stop_at)], env=environment, capture_output=True,
                          text=True, timeout=240)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "run" / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_a_stopped_fsdp_run_resumes_bit_exactly(tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert torchrun(tmp_path, whole, "fsdp").returncode == 0
    first = torchrun(tmp_path, stopped, "fsdp", stop_at=4)  # both ranks die in step 4, after the step-2 save
    assert first.returncode != 0
    state = torch.load(stopped / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2 and len(state["rng_ranks"]) == 2
    assert "seg_outputs.1.weight" not in state["optimizer"]["state"]  # the zero-weighted head took no step
    resumed = torchrun(tmp_path, stopped, "fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = final_weights(whole), final_weights(stopped)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name

    ranks = [torch.load(whole / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0]["initial"].items():  # the same initial weights on both ranks...
        assert torch.equal(value, ranks[1]["initial"][name]), name
    assert ranks[0]["draws"] != ranks[1]["draws"]  # ...but each rank its own dropout and augmentation draws


@pytest.mark.slow
def test_a_checkpoint_written_without_fsdp_resumes_under_fsdp(tmp_path):
    ddp, mixed = tmp_path / "ddp", tmp_path / "mixed"
    assert torchrun(tmp_path, ddp, "ddp").returncode == 0
    assert torchrun(tmp_path, mixed, "ddp", stop_at=4).returncode != 0
    resumed = torchrun(tmp_path, mixed, "fsdp")  # loads the DDP checkpoint, then saves again under FSDP
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(mixed / "run" / "last.pt", weights_only=True)
    assert state["step"] == 6
    expected = final_weights(ddp)
    for name, value in state["model"].items():  # DDP and FSDP average gradients in a different order
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_nodes_without_a_shared_output_folder_are_stopped_by_name(tmp_path):
    out = tmp_path / "unshared"
    assert torchrun(tmp_path, out, "ddp", stop_at=4, UNSHARED="1").returncode != 0
    assert (out / "node0" / "last.pt").is_file() and not (out / "node1" / "last.pt").exists()  # rank 0 writes
    again = torchrun(tmp_path, out, "ddp", UNSHARED="1")
    assert again.returncode != 0
    assert "do not resume alike" in again.stderr
    assert "ranks [0] at step 2" in again.stderr and "ranks [1] at step 0 (no checkpoint)" in again.stderr


@pytest.mark.slow
def test_batch_dice_is_the_dice_of_all_ranks_batches(tmp_path):
    """Two DDP ranks with batch Dice train the weights one process trains on both batches together."""
    out = tmp_path / "dice"
    run = torchrun(tmp_path, out, "ddp", DROPOUT="0")
    assert run.returncode == 0, run.stderr[-3000:]
    streams = [rank_batches(0), rank_batches(1)]

    def union():
        while True:
            parts = [next(s) for s in streams]
            yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    torch.manual_seed(3)
    single = DeepSupervised(0.0)
    fit(single, union(), loss_fn, loop_config(tmp_path / "single"))
    for name, value in final_weights(out).items():
        torch.testing.assert_close(value, single.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
