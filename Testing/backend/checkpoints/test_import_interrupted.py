"""``import --force`` killed at any file operation: the store lists the old model or the new one, each
loading whole, never a mix; nothing half-written stays behind once the next install ran.

The kill is simulated in-process: every file operation (rename, delete, mkdir and the weights file
that safetensors writes) is counted, and the n-th one raises ``Killed``, as does every later one, so
no clean-up happens after it (a killed process runs no ``finally``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.kill_switch import Killed, KillSwitch
from support.tiny_models import save_tiny_model
from tsfm_backend.checkpoints import import_model, load_model
from tsfm_backend.formats import ours
from tsfm_backend.store import install_dir, installed_models, models_dir, recover_store


def armed(switch: KillSwitch):  # noqa: ANN201 - context manager
    return switch.armed(ours, "save_file", 1, b"half-written safetensors")


def weights_of(model_id: str) -> dict[str, torch.Tensor]:
    return load_model(model_id, device="cpu").network.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_a_killed_forced_import_never_lists_a_model_that_does_not_load(tmp_path: Path) -> None:
    # The new version has another head (three classes): old card with new weights could not load.
    old = save_tiny_model(tmp_path / "old", model_id="m", classes={1: "tumour"}, patch_size=(16, 16, 16), seed=1)
    new = save_tiny_model(tmp_path / "new", model_id="m", classes={1: "a", 2: "b"}, patch_size=(16, 16, 16), seed=2)
    import_model(old, "m")
    old_weights = weights_of("m")
    with armed(KillSwitch(None)) as switch:
        import_model(new, "m", overwrite=True)
    total = switch.count
    new_weights = weights_of("m")
    assert total >= 3, switch.log

    for kill_at in range(1, total + 1):
        import_model(old, "m", overwrite=True)  # back to the old model, and clean
        with pytest.raises(Killed), armed(KillSwitch(kill_at)):
            import_model(new, "m", overwrite=True)
        listed = [card.id for card in installed_models()]
        if "m" in listed:  # listed means whole: old or new, never a mix
            assert any(same(weights_of("m"), w) for w in (old_weights, new_weights)), (kill_at, switch.log)
            assert sorted(p.name for p in install_dir("m").iterdir()) == sorted([ours.WEIGHTS_FILE, ours.CARD_FILE])
        recover_store()
        assert "m" in [card.id for card in installed_models()], kill_at
        assert any(same(weights_of("m"), w) for w in (old_weights, new_weights)), kill_at
        assert [p.name for p in models_dir().iterdir()] == ["m"], kill_at  # nothing hidden left behind

        import_model(new, "m", overwrite=True)  # and the next import works
        assert same(weights_of("m"), new_weights)


def test_recover_store_leaves_a_running_install_alone(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m", model_id="m", patch_size=(16, 16, 16))
    seen: list[list[str]] = []

    def write(staging: Path) -> None:
        ours.write(*ours.read(model), staging)
        recover_store()  # e.g. a second install starting meanwhile
        seen.append(sorted(p.name for p in models_dir().iterdir()))

    from tsfm_backend.store import install_atomically

    install_atomically("m", write)
    assert len(seen[0]) == 1 and seen[0][0].startswith(".import-")  # still there after the recovery
    assert ours.detect(install_dir("m")) and [p.name for p in models_dir().iterdir()] == ["m"]
