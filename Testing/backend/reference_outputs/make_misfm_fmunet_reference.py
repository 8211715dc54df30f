"""Write ``misfm_fmunet_reference.npz``: a small FMUNet's outputs computed by MIS-FM's own network code.

MIS-FM released ``fmunet_abk1k_volf.pt``, a PyMIC checkpoint of the ``FMUNet`` of its ``net/fmunet.py``.
``test_misfm_fmunet_reference.py`` loads the same weights, written in PyMIC's checkpoint layout
(``{"model_state_dict": ...}``), through our importer and compares the outputs.

The authors' code is imported from a checkout given on the command line, never copied here. Steps::

    python3 -m venv /tmp/misfm
    /tmp/misfm/bin/pip install torch==2.13.0 "numpy<2"
    /tmp/misfm/bin/pip install --no-deps pymic==0.6.2   # net/fmunet.py imports pymic.net.net_init
    git clone https://github.com/openmedlab/MIS-FM /tmp/misfm_src   # commit 1506d659 was used
    /tmp/misfm/bin/python Testing/backend/reference_outputs/make_misfm_fmunet_reference.py /tmp/misfm_src

The network: ``FMUNet`` with ``CONFIG`` below: the released block structure (``depth=2``), narrow
feature channels and ``res_mode=1`` so the in-plane (1x3x3) first level is covered. Weights come from
each tensor's name by ``reference_value`` of ``make_suprem_swin_reference.py``; the file keeps the names,
in order, and the SHA-256 of the weights. The input is (1, 1, 16, 32, 16) float16; ``output`` is the
network's output in its ``"test"`` stage (float32 logits, full resolution), ``output_1`` .. ``output_3``
the three coarser outputs of its ``"train"`` stage (multiscale prediction).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("misfm_fmunet_reference.npz")
IMAGE_SHAPE = (16, 32, 16)
CONFIG = {"in_chns": 1, "class_num": 2, "feature_chns": [4, 8, 12, 16, 24], "dropout": 0.2, "depth": 2,
          "res_mode": 1, "multiscale_pred": True}
INPUT_SEED = 20240614


sys.path.insert(0, str(Path(__file__).parent))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float16 in [-1, 1]-ish, as MIS-FM's windowed CT: a smooth blob plus noise."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((z + 0.2) ** 2 + (y - 0.1) ** 2 + (x + 0.3) ** 2) / 0.3)
    noise = 0.2 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return (blob - 0.5 + 0.3 * x + noise).astype(np.float16)[None, None]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    sys.path.insert(0, str(Path(argv[0]).resolve()))
    import torch
    from net.fmunet import FMUNet

    torch.set_num_threads(1)
    network = FMUNet(dict(CONFIG)).eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    image = torch.from_numpy(reference_input().astype(np.float32))
    with torch.no_grad():
        network.set_stage("train")
        multiscale = [y.numpy() for y in network(image)]
        network.set_stage("test")
        output = network(image).numpy()
    np.savez_compressed(
        OUTPUT,
        input=reference_input(),
        output=output.astype(np.float32),
        **{f"output_{i}": y.astype(np.float32) for i, y in enumerate(multiscale) if i},
        keys=np.array(list(weights)),
        weights_sha256=np.array(weights_digest(weights)),
        torch_version=np.array(torch.__version__),
        config=np.array("FMUNet(" + repr(CONFIG) + ")"),
    )
    print(f"torch {torch.__version__}: output {output.shape}, |max| {np.abs(output).max():.4f}, "
          f"std {output.std():.4f}, multiscale {[y.shape for y in multiscale]}; wrote {OUTPUT} "
          f"({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
