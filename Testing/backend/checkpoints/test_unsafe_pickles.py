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


def test_numpy_1_checkpoints_with_numpy_core_names_still_load(tmp_path):
    """Checkpoints pickled under numpy 1.x refer to numpy.core.multiarray.scalar/_reconstruct."""
    import numpy as np
    from tsfm_backend.formats.safe_unpickler import torch_load

    functions = (np._core.multiarray.scalar, np._core.multiarray._reconstruct)
    original = [f.__module__ for f in functions]
    path = tmp_path / "old.model"
    try:
        for function in functions:
            function.__module__ = "numpy.core.multiarray"
        torch.save({"best": np.float64(0.5), "curve": np.arange(3.0)}, path)
    finally:
        for function, module in zip(functions, original, strict=True):
            function.__module__ = module
    assert b"numpy.core.multiarray" in path.read_bytes()
    loaded = torch_load(path)
    assert loaded["best"] == 0.5 and loaded["curve"].tolist() == [0.0, 1.0, 2.0]
