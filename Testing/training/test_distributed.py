"""Distributed training: two torchrun processes on the CPU (gloo), DDP and FSDP, train the weights one
process would on both ranks' batches together (DDP ranks stay identical; FSDP's sharded state is gathered
into the checkpoint); activation checkpointing keeps names and gradients."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from tsfm_training.distributed import DistInfo, enable_activation_checkpointing, wrap
from tsfm_training.loop import LoopConfig, fit

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import os
    import sys
    from pathlib import Path
    import torch
    from torch import nn
    sys.path.insert(0, {testdir!r})
    from test_distributed import network, rank_batches, loop_config
    from tsfm_training import distributed
    from tsfm_training.loop import fit, unwrap

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    info = distributed.setup("cpu")
    strategy = sys.argv[2]
    model = distributed.wrap(network(), info, strategy)
    losses = []

    def loss_fn(m, b):
        loss = nn.functional.cross_entropy(m(b["image"]), b["label"])
        losses.append(float(loss))
        return loss

    fit(model, rank_batches(info.rank), loss_fn, loop_config(out / "run"))
    weights = unwrap(model).state_dict() if strategy == "ddp" else {{}}  # FSDP ranks hold shards only
    torch.save({{"weights": weights, "losses": losses}}, out / f"rank{{info.rank}}.pt")
    torch.distributed.barrier()  # both ranks done with FSDP's last collectives before either tears down
    distributed.cleanup()
    # Leave without the interpreter's teardown: since the batch statistics are summed over ranks, a gloo
    # rank sometimes aborts there after its work is done ("terminate called without an active exception").
    os._exit(0)
""")


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                         nn.Conv3d(4, 2, 1))


def rank_batches(rank: int):
    generator = torch.Generator().manual_seed(100 + rank)
    while True:
        image = torch.randn(2, 1, 6, 6, 6, generator=generator)
        yield {"image": image, "label": (image[:, 0] > 0.3).long()}


def loop_config(output_dir: Path) -> LoopConfig:
    return LoopConfig(steps=4, lr=0.05, optimizer="sgd", schedule="constant", output_dir=output_dir, device="cpu",
                      progress=False, seed=3, log_every=1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_keep_identical_weights(tmp_path, strategy):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(testdir=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "training"), str(REPO / "Backend")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path), strategy], env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["losses"] != rank1["losses"]  # each rank trained on its own batches...
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]  # full state, from rank 0
    initial = network().state_dict()
    assert set(saved) == set(initial) and any(not torch.equal(initial[n], v) for n, v in saved.items())
    for name, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][name]), name  # ...and the DDP weights stayed identical
        assert torch.equal(saved[name], value), name

    # Both average gradients: the same as one process on the union of both ranks' batches.
    streams = [rank_batches(0), rank_batches(1)]

    def union():
        while True:
            parts = [next(s) for s in streams]
            yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    single = network()
    fit(single, union(), lambda m, b: nn.functional.cross_entropy(m(b["image"]), b["label"]),
        loop_config(tmp_path / "single"))
    for name, value in single.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=1e-5, atol=1e-6)


class Staged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 4, 3, padding=1)])
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = torch.relu(stage(x))
        return self.head(x)


def test_activation_checkpointing_keeps_names_and_gradients():
    torch.manual_seed(0)
    plain, checkpointed = Staged(), Staged()
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 2
    assert list(plain.state_dict()) == list(checkpointed.state_dict())
    x = torch.randn(1, 1, 6, 6, 6)
    for model in (plain, checkpointed):
        model(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    single = wrap(Staged(), DistInfo(), "ddp")  # one process: nothing to wrap
    assert isinstance(single, Staged)
    with pytest.raises(ValueError, match="strategy 'zero'"):
        wrap(Staged(), DistInfo(), "zero")


@pytest.mark.slow
@pytest.mark.parametrize("config, strategy", [("pctnet_volf_pretrain_smoke", "ddp"),
                                              ("stunet_h_totalseg_smoke", "fsdp")])
def test_recipes_run_under_torchrun(tmp_path, config, strategy):
    """Real recipes on two processes: PCT-Net leaves some parameters unused (DDP must allow it); STU-Net
    with FSDP and activation checkpointing; rank 0 exports a model the backend loads."""
    from tsfm_backend.checkpoints import load_model

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tsfm_training.cli", "run", config, "--set", f"output_dir={tmp_path}",
                          "--set", f"distributed.strategy={strategy}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load_model(tmp_path / "model").card.id.endswith("smoke")
