"""Write ``vista3d_monai140.npz``: outputs of MONAI 1.4.0's own VISTA3D, the version the bundle pins.

The MONAI bundle ``vista3d`` (model zoo ``models/vista3d``, 0.5.x) builds its network as
``monai.networks.nets.vista3d132(in_channels=1)`` and its ``configs/metadata.json`` pins
``monai_version`` 1.4.0. MONAI 1.6 changed the class head's batch product (one matrix product for the
whole batch instead of one per image), so the reference comes from 1.4.0 itself, not from the MONAI the
project installs. ``test_vista3d_reference.py`` writes the same weights in the released ``model.pt``
layout (a plain state_dict), imports them through our importer and compares.

Run it with MONAI 1.4.0 first on the path, never in the project's environment; 1.4.0 imports with the
project's torch and numpy, so only MONAI needs installing (no dependencies)::

    /work/main/.venv/bin/pip install --no-deps --target /tmp/monai140 monai==1.4.0
    PYTHONPATH=/tmp/monai140 /work/main/.venv/bin/python \
        Testing/backend/reference_outputs/vista3d/make_vista3d_reference.py

The network is ``vista3d132(encoder_embed_dim=16)``: the authors' factory and depth, a third of their
width (24 M weights instead of 218 M). Its weights are made from each tensor's name by
``reference_value`` of ``make_suprem_swin_reference.py`` (splitmix64, the same on every platform) and the
file keeps their SHA-256; the input is made from a formula here and its SHA-256 kept too. Stored: the
automatic logits of three class prompts and the point-branch logits of two clicks, each (32, 32, 32)
output subsampled every fourth voxel (8^3 values), float32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("vista3d_monai140.npz")
IMAGE_SHAPE = (32, 32, 32)
ENCODER_EMBED_DIM = 16
CLASS_PROMPTS = (1, 3, 62)
# (x, y, z) voxel coordinates of the network input and their labels: 1 the object, 0 not the object.
POINTS = ((9.0, 20.0, 13.0), (22.0, 7.0, 17.0))
POINT_LABELS = (1, 0)
SUBSAMPLE = (slice(1, None, 4),) * 3
INPUT_SEED = 20240605

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float32 in [0, 1], as a windowed CT: a bright blob on a ramp, with noise."""
    x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((x + 0.3) ** 2 + (y - 0.2) ** 2 + (z - 0.1) ** 2) / 0.2)
    noise = 0.1 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return np.clip(0.5 * blob + 0.15 * (y + 1) + noise, 0.0, 1.0).astype(np.float32)[None, None]


def input_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


def main() -> int:
    import monai
    import torch
    from monai.networks.nets import vista3d132

    torch.set_num_threads(1)
    network = vista3d132(encoder_embed_dim=ENCODER_EMBED_DIM).eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    image = reference_input()
    inputs = torch.from_numpy(image)
    with torch.no_grad():
        automatic = network(inputs, class_vector=torch.tensor(CLASS_PROMPTS)[:, None], transpose=True)
        clicks = network(inputs, point_coords=torch.tensor([POINTS]), point_labels=torch.tensor([POINT_LABELS]),
                         transpose=True)
    automatic, clicks = automatic[0].numpy(), clicks[0, 0].numpy()
    np.savez_compressed(
        OUTPUT,
        automatic=automatic[(slice(None), *SUBSAMPLE)].astype(np.float32),
        points=clicks[SUBSAMPLE].astype(np.float32),
        input_sha256=np.array(input_digest(image)),
        keys=np.array(list(weights)),
        weights_sha256=np.array(weights_digest(weights)),
        monai_version=np.array(monai.__version__),
        torch_version=np.array(torch.__version__),
        config=np.array(f"vista3d132(encoder_embed_dim={ENCODER_EMBED_DIM})"),
    )
    print(f"MONAI {monai.__version__}, torch {torch.__version__}: automatic {automatic.shape} std "
          f"{automatic.std():.4f}, points {clicks.shape} std {clicks.std():.4f}; wrote {OUTPUT} "
          f"({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
