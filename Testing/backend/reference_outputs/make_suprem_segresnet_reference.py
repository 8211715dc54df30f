"""Write ``suprem_segresnet_monai090.npz``: SuPreM's SegResNet output computed by MONAI 0.9.0 itself.

SuPreM trained its SegResNet release with MONAI 0.9.0 (its requirements pin ``monai==0.9.0``), built in
``supervised_pretraining/train.py`` as ``SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1],
init_filters=16, in_channels=1, out_channels=num_class, dropout_prob=0.0)`` (``--segresnet_init_filters``
defaults to 16). ``test_suprem_segresnet_reference.py`` loads the same weights, written in the released
file layout (``{"net": {"module.<key>": ...}}``), through our importer and compares the outputs.

Run it in an environment of its own, never the project's (MONAI 0.9.0 needs numpy < 2)::

    python3 -m venv /tmp/monai090
    /tmp/monai090/bin/pip install torch==2.13.0 "monai==0.9.0" "numpy<2" einops
    /tmp/monai090/bin/python Testing/backend/reference_outputs/make_suprem_segresnet_reference.py

The network is the authors' configuration with two output channels (the release has 25) so that the
stored output stays small: 4.7 M weights, made from each tensor's name by ``reference_value`` of
``make_suprem_swin_reference.py``; the file keeps the names, in order, and the SHA-256 of the weights.
The input is (1, 1, 24, 16, 16) float16, the output (1, 2, 24, 16, 16) float32 logits.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("suprem_segresnet_monai090.npz")
IMAGE_SHAPE = (24, 16, 16)
CONFIG = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16, "in_channels": 1,
          "out_channels": 2, "dropout_prob": 0.0}
INPUT_SEED = 20240613


sys.path.insert(0, str(Path(__file__).parent))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float16 in [0, 1]-ish, as SuPreM's windowed CT: a smooth blob plus noise."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((z - 0.1) ** 2 + (y + 0.3) ** 2 + (x - 0.2) ** 2) / 0.3)
    noise = 0.1 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return (0.6 * blob + 0.2 * (y + 1) + noise).astype(np.float16)[None, None]


def main() -> int:
    import monai
    import torch
    from monai.networks.nets import SegResNet

    torch.set_num_threads(1)
    network = SegResNet(**CONFIG).eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    image = reference_input()
    with torch.no_grad():
        output = network(torch.from_numpy(image.astype(np.float32))).numpy()
    np.savez_compressed(
        OUTPUT,
        input=image,
        output=output.astype(np.float32),
        keys=np.array(list(weights)),
        weights_sha256=np.array(weights_digest(weights)),
        monai_version=np.array(monai.__version__),
        torch_version=np.array(torch.__version__),
        config=np.array("SegResNet(" + ", ".join(f"{k}={v}" for k, v in CONFIG.items()) + ")"),
    )
    print(f"MONAI {monai.__version__}, torch {torch.__version__}: output {output.shape}, "
          f"|max| {np.abs(output).max():.4f}, std {output.std():.4f}; wrote {OUTPUT} "
          f"({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
