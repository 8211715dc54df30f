"""Write ``suprem_unet_universal.npz``: SuPreM's UNet3D Universal Model output computed by the authors' code.

The released ``supervised_suprem_unet_2100.pth`` holds ``Universal_model(backbone="unet",
encoding="word_embedding")`` of SuPreM's ``supervised_pretraining/backbone`` (UNet3D of ``unet.py``: two
conv + ContBatchNorm3d + ReLU units per level, the batch norm normalising with the current batch even in
eval mode; then the CLIP-driven head of ``Universal_model.py``). ``test_suprem_unet_reference.py`` loads
the same weights, written in the released file layout, through our importer and compares the outputs.

The authors' code is imported from a checkout given on the command line, never copied here. Steps::

    python3 -m venv /tmp/monai090
    /tmp/monai090/bin/pip install torch==2.13.0 "monai==0.9.0" "numpy<2" einops
    git clone https://github.com/MrGiovanni/SuPreM /tmp/suprem_src   # commit 76e1a64a was used
    /tmp/monai090/bin/python Testing/backend/reference_outputs/make_suprem_unet_reference.py /tmp/suprem_src

(``Universal_model.py`` imports its SwinUNETR and DiNTS too, which need MONAI 0.9; the UNet path itself
is pure torch.) The network: ``Universal_model(img_size=(96, 96, 96), in_channels=1, out_channels=3,
backbone="unet", encoding="word_embedding")`` (the UNet3D widths are fixed, 19.4 M weights), three classes
so the stored output stays small. Weights come from each tensor's name in the authors' ``state_dict``
(``backbone.down_tr64...``, ``organ_embedding``, ``controller...``) by ``reference_value`` of
``make_suprem_swin_reference.py``; the file keeps those names, in order, and the SHA-256 of the weights.
The input is (1, 1, 24, 16, 16) float16, the output (1, 3, 24, 16, 16) float32 logits.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("suprem_unet_universal.npz")
IMAGE_SHAPE = (24, 16, 16)
NUM_CLASSES = 3
INPUT_SEED = 20240612


sys.path.insert(0, str(Path(__file__).parent))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_value, weights_digest, splitmix_uniform = (COMMON.reference_value, COMMON.weights_digest,
                                                     COMMON.splitmix_uniform)


def reference_weights(state_dict: dict) -> dict:
    """``state_dict`` (authors' names) with every floating-point tensor replaced by ``reference_value``."""
    return COMMON.reference_weights(state_dict)


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float16 in [0, 1]-ish, as SuPreM's windowed CT: a smooth blob plus noise."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((z + 0.3) ** 2 + (y - 0.2) ** 2 + (x + 0.1) ** 2) / 0.25)
    noise = 0.1 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return (0.6 * blob + 0.2 * (z + 1) + noise).astype(np.float16)[None, None]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    sys.path.insert(0, str(Path(argv[0]).resolve() / "supervised_pretraining"))
    import monai
    import torch
    from backbone.Universal_model import Universal_model

    torch.set_num_threads(1)
    network = Universal_model(img_size=(96, 96, 96), in_channels=1, out_channels=NUM_CLASSES, backbone="unet",
                              encoding="word_embedding").eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    digest = weights_digest(weights)  # before the forward: ContBatchNorm3d updates its running stats in eval
    image = reference_input()
    with torch.no_grad():
        output = network(torch.from_numpy(image.astype(np.float32))).numpy()
    np.savez_compressed(
        OUTPUT,
        input=image,
        output=output.astype(np.float32),
        keys=np.array(list(weights)),
        weights_sha256=np.array(digest),
        monai_version=np.array(monai.__version__),
        torch_version=np.array(torch.__version__),
        config=np.array(f"Universal_model(img_size=(96, 96, 96), in_channels=1, out_channels={NUM_CLASSES}, "
                        "backbone='unet', encoding='word_embedding')"),
    )
    print(f"MONAI {monai.__version__}, torch {torch.__version__}: output {output.shape}, "
          f"|max| {np.abs(output).max():.4f}, std {output.std():.4f}; wrote {OUTPUT} "
          f"({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
