"""``loop.seed`` sets the initial weights in every recipe: the network is built after seeding, so two runs
with one seed start from the same tensors and another seed starts elsewhere (and every torchrun rank
builds the same network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tsfm_training.config import apply_overrides, load_config, locate_shared_data, recipe_module

REPO = Path(__file__).resolve().parents[2]


class Captured(Exception):
    """Raised by the stand-in ``fit`` once it holds the network the recipe built."""


def initial_weights(name: str, seed: int, output_dir: Path, monkeypatch) -> dict[str, torch.Tensor]:
    import tsfm_training.loop
    from tsfm_training.loop import unwrap

    seen: dict[str, torch.Tensor] = {}

    def capture(model, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})
        raise Captured

    monkeypatch.setattr(tsfm_training.loop, "fit", capture)
    config = apply_overrides(load_config(name), [f"output_dir={output_dir}", f"loop.seed={seed}"])
    with pytest.raises(Captured):
        recipe_module(config).run(locate_shared_data(config))
    torch.manual_seed(seed + 1000)  # whatever the global state is before the next build
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stunet_s_totalseg_smoke", "pctnet_volf_pretrain_smoke",
                                  "sam3d_adapter_finetune_smoke"])
def test_the_seed_sets_the_initial_weights(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    first = initial_weights(name, 0, tmp_path, monkeypatch)
    again = initial_weights(name, 0, tmp_path, monkeypatch)
    other = initial_weights(name, 1, tmp_path, monkeypatch)
    assert first and set(first) == set(again) == set(other)
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
    trainable = [k for k, v in first.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    assert trainable and any(not torch.equal(first[k], other[k]) for k in trainable)
