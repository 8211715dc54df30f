"""Crafted pickles that try to run code are refused with a clear error, and nothing runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from support.official_checkpoints import stunet_for, write_v1_checkpoint
from tsfm_backend.checkpoints import UnsafePickleError, load_model
from tsfm_backend.formats.safe_unpickler import load_plans_pickle


class RunsACommand:
    """Unpickling this calls os.system (it would create the marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_model_pkl_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "owned"
    path = write_v1_checkpoint(tmp_path / "evil.model", stunet_for("tiny", 3, [[2, 2, 2]] * 4 + [[1, 1, 1]]))
    with open(tmp_path / "evil.model.pkl", "wb") as handle:
        pickle.dump({"init": (), "name": "STUNetTrainer_base", "plans": RunsACommand(marker)}, handle)
    with pytest.raises(UnsafePickleError, match=r"evil\.model\.pkl: refused to unpickle: it asks for (posix|os)\.system"):
        load_model(path)
    assert not marker.exists()


def test_plans_pickle_with_a_builtin_call_is_refused(tmp_path):
    class CallsEval:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps({"plans": CallsEval()}))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_plans_pickle(path)


def test_malicious_torch_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "owned"
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "trainer_name": RunsACommand(marker)}, path)
    with pytest.raises(UnsafePickleError, match="system.*nothing from it was executed"):
        load_model(path)
    assert not marker.exists()


def test_truncated_pickle_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "x.model.pkl"
    path.write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(ValueError, match="not a readable plans pickle"):
        load_plans_pickle(path)
