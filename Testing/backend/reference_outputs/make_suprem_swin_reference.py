"""Write ``suprem_swinunetr_monai090.npz``: a small SwinUNETR's output computed by MONAI 0.9.0 itself.

SuPreM trained its SwinUNETR with a copy of MONAI 0.9.0's (its requirements pin ``monai==0.9.0``), whose
patch merging concatenates the 2x2x2 neighbours in another order than MONAI 1.5 and later. This file lets
``test_suprem_swin_reference.py`` check, without MONAI 0.9, that our network with
``patch_merging: "monai<1.5"`` computes what the authors' MONAI computes, to float32 rounding.

Run it in an environment of its own, never the project's (MONAI 0.9.0 needs numpy < 2)::

    python3 -m venv /tmp/monai090
    /tmp/monai090/bin/pip install torch==2.13.0 "monai==0.9.0" "numpy<2" einops
    /tmp/monai090/bin/python Testing/backend/reference_outputs/make_suprem_swin_reference.py

The network: ``SwinUNETR(img_size=(64, 32, 32), in_channels=1, out_channels=2, feature_size=12)``, the
smallest MONAI 0.9 builds that runs (every size divisible by 32, and the bottleneck's instance norm needs
more than one voxel). Its 4.1 M weights would not fit the few hundred kB a test fixture may take, so they
are not stored: ``reference_weights`` makes them from each tensor's name with splitmix64 (pure integer
arithmetic, the same on every numpy, torch and platform), and the file keeps their SHA-256 so the test
knows it rebuilt the very same ones. The input (float16 values) is rebuilt by ``reference_input`` and
checked against the SHA-256 of its bytes; the float32 output is stored at every second voxel along each
axis (``stored``), which every window and every merged 2x2x2 neighbourhood still reaches.
"""

from __future__ import annotations

import hashlib
import math
import sys
import zlib
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("suprem_swinunetr_monai090.npz")
IMAGE_SHAPE = (64, 32, 32)
CONFIG = {"in_channels": 1, "out_channels": 2, "feature_size": 12}
INPUT_SEED = 20240611
MASK64 = (1 << 64) - 1


def splitmix_uniform(count: int, seed: int) -> np.ndarray:
    """``count`` float64 values in [-1, 1) from the splitmix64 sequence of ``seed`` (24 bits each)."""
    start = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK64)
    z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + start
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def reference_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of one weight: layer norms near 1, biases and position biases small, other
    weights of variance 1 / fan-in so the activations keep their scale through the network."""
    u = splitmix_uniform(math.prod(shape), zlib.crc32(name.encode()))
    if name.endswith("relative_position_bias_table"):
        values = 0.5 * u
    elif name.endswith("bias"):
        values = 0.1 * u
    elif len(shape) == 1:
        values = 1.0 + 0.2 * u
    else:
        values = u * math.sqrt(3.0 / math.prod(shape[1:]))
    return values.astype(np.float32).reshape(shape)


def reference_weights(state_dict: dict) -> dict:
    """``state_dict`` with every floating-point tensor replaced by ``reference_value`` (torch tensors)."""
    import torch

    return {name: torch.from_numpy(reference_value(name, tuple(value.shape))) if value.is_floating_point()
            else value for name, value in state_dict.items()}


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over the names and float32 bytes of the floating-point tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if value.is_floating_point():
            digest.update(name.encode() + b"\0")
            digest.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float16: smooth structure plus noise, roughly a normalised CT's range."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((z - 0.2) ** 2 + (y + 0.1) ** 2 + x**2) / 0.3)
    noise = 0.25 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return (blob + 0.3 * z + noise).astype(np.float16)[None, None]


def stored(output: np.ndarray) -> np.ndarray:
    """The part of a (B, C, Z, Y, X) output that the file keeps."""
    return output[:, :, ::2, ::2, ::2]


def main() -> int:
    import monai
    import torch
    from monai.networks.nets import SwinUNETR

    torch.set_num_threads(1)
    network = SwinUNETR(img_size=IMAGE_SHAPE, **CONFIG).eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    image = reference_input()
    with torch.no_grad():
        output = network(torch.from_numpy(image.astype(np.float32))).numpy()
    np.savez_compressed(
        OUTPUT,
        input_sha256=np.array(hashlib.sha256(image.tobytes()).hexdigest()),
        output=stored(output).astype(np.float32),
        weights_sha256=np.array(weights_digest(weights)),
        monai_version=np.array(monai.__version__),
        torch_version=np.array(torch.__version__),
        config=np.array(f"SwinUNETR(img_size={IMAGE_SHAPE}, " + ", ".join(f"{k}={v}" for k, v in CONFIG.items())
                        + ")"),
    )
    print(f"MONAI {monai.__version__}, torch {torch.__version__}: output {output.shape}, "
          f"|max| {np.abs(output).max():.4f}; wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
