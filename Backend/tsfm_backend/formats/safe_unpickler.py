"""Reading pickles without executing them.

Two readers:
- ``load_plans_pickle`` for nnU-Net's ``.pkl`` plan files: a restricted unpickler that resolves only the
  handful of numpy/collections globals real plan files use. Any other global (``os.system``,
  ``builtins.eval``, a class of some package) is refused before anything is called.
- ``torch_load`` for torch checkpoints: ``torch.load(weights_only=True)`` with the same numpy types
  allowlisted, because nnU-Net stores numpy scalars beside the weights.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_backend.formats.errors import CheckpointError, UnsafePickleError

# numpy moved ``numpy.core`` to ``numpy._core`` in 2.0; pickles written by either name must load.
_NUMPY_MULTIARRAY = getattr(np, "_core", None) or np.core  # type: ignore[attr-defined]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _NUMPY_MULTIARRAY.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _NUMPY_MULTIARRAY.multiarray.scalar,
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_MULTIARRAY.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_MULTIARRAY.multiarray._reconstruct,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS and has no persistent ids."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle: it asks for {module}.{name}, which is not one of the "
                f"numpy/collections types plan files contain; nothing from the file was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused to unpickle: it uses persistent ids")


def load_plans_pickle(path: str | Path) -> Any:
    """The object in an nnU-Net ``.pkl`` file (plans or ``.model.pkl``), read without running any code."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a readable plans pickle: {error}") from error


def _numpy_safe_globals() -> list[Any]:
    """numpy types nnU-Net checkpoints hold beside the weights (training curves, plans inside init_args)."""
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    multiarray = _NUMPY_MULTIARRAY.multiarray
    return [
        multiarray.scalar,
        multiarray._reconstruct,
        # Files written with numpy 1.x name these functions under numpy.core.
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with numpy scalars and arrays allowed.

    Raises UnsafePickleError when the file asks for anything else (the message names it).
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
        first_line = next((line for line in lines if "GLOBAL" in line or "global:" in line), lines[0])
        if "weights_only" in str(error) or "global" in str(error).lower():
            raise UnsafePickleError(
                f"{path}: refused to load: the file holds objects other than tensors and plain data "
                f"({first_line}); nothing from it was executed"
            ) from error
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {first_line}") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {error}") from error
