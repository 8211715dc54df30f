"""Write ``pctnet_reference.npz``: a small PCT-Net's outputs computed by MIS-FM's own network code.

MIS-FM released ``pctnet_ct10k_volf.pt``, a PyMIC checkpoint of the ``PCTNet`` of its ``net/pct_net.py``
(Swin layers from its ``net/transformer.py``). ``test_pctnet_reference.py`` writes the same weights in
PyMIC's checkpoint layout (``{"model_state_dict": ...}``), imports them with ``import_model`` and compares
the outputs.

The authors' code is imported from a checkout given on the command line, never copied here. Steps::

    python3 -m venv /tmp/scratch_pctnet
    /tmp/scratch_pctnet/bin/pip install torch==2.13.0 "numpy<2" einops pillow pyyaml safetensors huggingface_hub
    /tmp/scratch_pctnet/bin/pip install --no-deps timm==1.0.31
    git clone https://github.com/openmedlab/MIS-FM /tmp/misfm_src   # commit 1506d659 was used
    /tmp/scratch_pctnet/bin/python Testing/backend/reference_outputs/make_pctnet_reference.py /tmp/misfm_src

torchvision: ``net/transformer.py`` imports ``DropPath``, ``to_3tuple`` and ``trunc_normal_`` from timm,
and ``import timm`` imports torchvision, of which no CPU build exists for torch 2.13. ``TORCHVISION_STUB``
puts in ``sys.modules`` the only names timm touches while it is imported: ``ops.misc.FrozenBatchNorm2d``
(a normalisation table in ``timm.layers``), six dataset classes (``timm.data.dataset_factory``),
``transforms.ToTensor`` (a base class in ``timm.data.transforms``) and the ``InterpolationMode`` member
names of ``transforms.functional`` (mode tables there). They cannot change the output: each stub class
raises as soon as it is constructed, and nothing on PCT-Net's path uses them. What PCT-Net calls is timm's
real code: ``to_3tuple`` (window sizes), ``trunc_normal_`` (initialisation, overwritten by the weights
below) and ``DropPath`` (the identity in eval mode); those three files import only torch.

The network: ``PCTNet`` with ``CONFIG`` below, in the released ``resolution_mode`` 1 (in-plane first
level), narrow channels and windows of 3 on a (16, 32, 48) patch, so that its Swin layers pad the token
grid (8x8x12 and 4x4x6 to multiples of 3), shift their windows, and shrink the window to the grid
(2x2x3 at the bottom). Weights come from each tensor's name by ``reference_value`` of
``make_suprem_swin_reference.py``; the file keeps the names, in order, and the SHA-256 of the weights.
The input is (1, 1, 16, 32, 48) float16, rebuilt by ``reference_input`` and checked against the SHA-256
of its bytes rather than stored (it would take half the file). The outputs of ``multiscale_pred``, float32 logits, are stored
with every second voxel along each axis (``stored``) for the two finest and whole for the two coarsest.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("pctnet_reference.npz")
IMAGE_SHAPE = (16, 32, 48)
CONFIG = {"in_chns": 1, "class_num": 2, "input_size": list(IMAGE_SHAPE), "feature_chns": [4, 8, 12, 16, 24],
          "dropout": [0, 0, 0.2, 0.2, 0.2], "depths": [2, 2, 2], "num_heads": [2, 4, 4],
          "window_sizes": [3, 3, 3], "resolution_mode": 1, "multiscale_pred": True}
INPUT_SEED = 20240615
# Outputs 0 and 1 (full and in-plane half resolution) are kept at every second voxel along each axis.
SUBSAMPLED = (0, 1)

# module -> {class name: class attributes}: all that ``import timm`` 1.0.31 takes from torchvision.
TORCHVISION_STUB: dict[str, dict[str, tuple[str, ...]]] = {
    "torchvision": {},
    "torchvision.ops": {},
    "torchvision.ops.misc": {"FrozenBatchNorm2d": ()},
    "torchvision.datasets": {name: () for name in ("CIFAR100", "CIFAR10", "MNIST", "KMNIST", "FashionMNIST",
                                                    "ImageFolder")},
    "torchvision.transforms": {"ToTensor": ()},
    "torchvision.transforms.functional": {
        "InterpolationMode": ("NEAREST", "BILINEAR", "BICUBIC", "BOX", "HAMMING", "LANCZOS")},
}

sys.path.insert(0, str(Path(__file__).parent))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 1, *IMAGE_SHAPE) float16 in [-1, 1]-ish, as MIS-FM's windowed CT: a smooth blob plus noise."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in IMAGE_SHAPE), indexing="ij")
    blob = np.exp(-((z - 0.1) ** 2 + (y + 0.2) ** 2 + (x - 0.3) ** 2) / 0.3)
    noise = 0.2 * splitmix_uniform(math.prod(IMAGE_SHAPE), INPUT_SEED).reshape(IMAGE_SHAPE)
    return (blob - 0.5 + 0.3 * y + noise).astype(np.float16)[None, None]


def stored(index: int, output: np.ndarray) -> np.ndarray:
    """The part of multiscale output ``index`` (B, C, Z, Y, X) that the file keeps."""
    return output[:, :, ::2, ::2, ::2] if index in SUBSAMPLED else output


def _install_torchvision_stub() -> None:
    class Unavailable:
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError(f"{type(self).__name__} is a torchvision stub; PCT-Net must not use it")

    for name, classes in TORCHVISION_STUB.items():
        module = types.ModuleType(name)
        module.__path__ = []
        for class_name, members in classes.items():
            setattr(module, class_name, type(class_name, (Unavailable,), {m: m.lower() for m in members}))
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, module)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    sys.path.insert(0, str(Path(argv[0]).resolve()))
    _install_torchvision_stub()
    import timm
    import torch
    from net.pct_net import PCTNet

    torch.set_num_threads(1)
    network = PCTNet(dict(CONFIG)).eval()
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    with torch.no_grad():
        outputs = [y.numpy() for y in network(torch.from_numpy(reference_input().astype(np.float32)))]
    np.savez_compressed(
        OUTPUT,
        input_sha256=np.array(hashlib.sha256(reference_input().tobytes()).hexdigest()),
        **{f"output_{i}": stored(i, y).astype(np.float32) for i, y in enumerate(outputs)},
        keys=np.array(list(weights)),
        weights_sha256=np.array(weights_digest(weights)),
        torch_version=np.array(torch.__version__),
        timm_version=np.array(timm.__version__),
        config=np.array("PCTNet(" + repr(CONFIG) + ")"),
    )
    print(f"torch {torch.__version__}, timm {timm.__version__}: outputs {[y.shape for y in outputs]}, "
          f"std {[round(float(y.std()), 4) for y in outputs]}; wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
