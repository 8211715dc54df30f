"""Write ``sam_med3d_reference.npz``: SAM-Med3D's network and click procedure computed by the authors' code.

Two parts, both from the authors' own code, run in an environment of its own (never the project's):

* **network**: MedIM's ``SAM_Med3D`` (``medim/models/sam_med3d.py``, the network ``medim_val_single.py``
  builds for ``sam_med3d_turbo.pth``) at the ``tiny`` size below, with weights made from each tensor's name
  (``reference_weights`` of ``../make_suprem_swin_reference.py``), run by ``sam_model_infer`` of the
  authors' ``utils/infer_utils.py`` on a generated 64^3 input with three scripted clicks (object,
  background, object) for 1, 2 and 3 clicks. Stored: the weight names and shapes in order, their SHA-256,
  samples and sums of the image embedding and of each click's low-resolution logits, and a signature
  of each final mask (``mask_signature``).
* **procedure**: ``data_preprocess`` and ``data_postprocess`` of ``utils/infer_utils.py`` (TorchIO resampling
  to 1.5 mm, canonical orientation, a 128^3 crop around the label, z-score over voxels above 0, and the
  way back) on two real CTs of ``shared/data/sts`` with their tumour masks as the label: one float32, one
  int16. Stored per case: the canonical resampled shape, the label's box there, the crop start, samples
  and sums of the normalised crop, and the box and signature of the image-grid mask ``data_postprocess``
  makes of a fixed crop mask.

Steps (the authors' code is imported from a checkout, never copied here)::

    python3 -m venv /tmp/sammed3d_env
    /tmp/sammed3d_env/bin/pip install torch==2.13.0
    /tmp/sammed3d_env/bin/pip install torchio==0.20.8 medim==0.1.2 edt requests   # infer_utils needs TorchIO < 1
    git clone https://github.com/uni-medical/SAM-Med3D /tmp/sammed3d_src   # commit f3de1fa was used
    /tmp/sammed3d_env/bin/python Testing/backend/reference_outputs/sam_med3d/make_sam_med3d_reference.py \\
        /tmp/sammed3d_src ../shared/data
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("sam_med3d_reference.npz")
CONFIG = {"img_size": 64, "patch_size": 16, "in_chans": 1, "embed_dim": 24, "depth": 2, "num_heads": 2,
          "mlp_ratio": 2.0, "out_chans": 48, "window_size": 3, "global_attn_indexes": [1], "mask_in_chans": 8,
          "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 16}
INPUT_SEED = 20250921
# (x, y, z) crop voxels in the crop tensor's axis order, True for an object click.
CLICKS = [((32, 30, 35), True), ((20, 44, 28), False), ((41, 25, 30), True)]
CASES = ("STS_001", "STS_007")  # float32 and int16 CT
CROP = 128
SPACING_MM = 1.5
SAMPLES = 256

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 1, S, S, S) float32, a z-scored CT crop's range: two blobs, a gradient and noise."""
    size = CONFIG["img_size"]
    x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, size),) * 3, indexing="ij")
    blobs = 2.0 * np.exp(-((x - 0.1) ** 2 + (y + 0.2) ** 2 + z**2) / 0.1) - np.exp(-((x + 0.5) ** 2 + y**2) / 0.05)
    noise = 0.3 * splitmix_uniform(size**3, INPUT_SEED).reshape((size,) * 3)
    return (blobs + 0.4 * z + noise).astype(np.float32)[None, None]


def sample_indices(count: int, total: int) -> np.ndarray:
    """``count`` flat indices spread evenly over ``total`` elements."""
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def summary(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(evenly spaced float32 samples, float64 [sum, weighted sum]) of an array; the weights are fixed."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    weights = splitmix_uniform(flat.size, 7)
    return (flat[sample_indices(SAMPLES, flat.size)].astype(np.float32),
            np.array([flat.sum(), (weights * flat).sum()]))


def mask_signature(mask: np.ndarray) -> np.ndarray:
    """int64 [count, sum of flat indices, sum of their squares] of a mask's voxels: equal signatures mean
    equal masks but for a vanishingly unlikely coincidence."""
    hits = np.flatnonzero(np.asarray(mask).ravel()).astype(np.int64)
    return np.array([hits.size, hits.sum(), (hits * hits).sum()], dtype=np.int64)


def fixed_crop_mask() -> np.ndarray:
    """A (128, 128, 128) crop mask with a ball off centre and a slab along one face, for the way back."""
    x, y, z = np.meshgrid(*(np.arange(CROP),) * 3, indexing="ij")
    ball = (x - 70) ** 2 + (y - 52) ** 2 + (z - 66) ** 2 <= 30**2
    return (ball | (x < 6)).astype(np.uint8)


def authors_network(authors):
    import torch

    c = CONFIG
    tokens = c["img_size"] // c["patch_size"]
    return authors.SAM_Med3D(
        image_encoder=authors.ImageEncoderViT3D(
            depth=c["depth"], embed_dim=c["embed_dim"], img_size=c["img_size"], mlp_ratio=c["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=c["num_heads"], patch_size=c["patch_size"],
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=c["global_attn_indexes"],
            window_size=c["window_size"], out_chans=c["out_chans"]),
        prompt_encoder=authors.PromptEncoder3D(embed_dim=c["out_chans"], image_embedding_size=(tokens,) * 3,
                                               input_image_size=(c["img_size"],) * 3, mask_in_chans=c["mask_in_chans"]),
        mask_decoder=authors.MaskDecoder3D(num_multimask_outputs=c["num_multimask_outputs"],
                                           transformer_dim=c["out_chans"], iou_head_depth=c["iou_head_depth"],
                                           iou_head_hidden_dim=c["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def network_part(infer_utils) -> dict[str, np.ndarray]:
    import torch
    from medim.models import sam_med3d as authors

    network = authors_network(authors)
    weights = reference_weights(network.state_dict())
    network.load_state_dict(weights, strict=True)
    image = torch.from_numpy(reference_input())
    out: dict[str, np.ndarray] = {
        "keys": np.array("\n".join(f"{k} {tuple(v.shape)}" for k, v in weights.items())),
        "weights_sha256": np.array(weights_digest(weights)),
    }
    with torch.no_grad():
        out["embedding_samples"], out["embedding_sums"] = summary(network.image_encoder(image).numpy())
    for count in range(1, len(CLICKS) + 1):
        script = iter(CLICKS[:count])

        def next_click(previous_mask, ground_truth, script=script):
            point, positive = next(script)
            return torch.tensor([[point]]), torch.tensor([[int(positive)]], dtype=torch.long)

        mask, low_res = infer_utils.sam_model_infer(network, image, roi_gt=torch.ones_like(image),
                                                    prompt_generator=next_click, num_clicks=count)
        out[f"logits_{count}_samples"], out[f"logits_{count}_sums"] = summary(low_res.numpy())
        out[f"mask_{count}"] = mask_signature(mask)
    return out


def procedure_part(infer_utils, data: Path, case: str) -> dict[str, np.ndarray]:
    import torchio as tio

    image, label = data / "sts" / case / "ct.nii.gz", data / "sts" / case / "mask.nii.gz"
    subject, meta = infer_utils.get_subject_and_meta_info(str(image), str(label))
    canonical = tio.ToCanonical()(tio.Resample(target=(SPACING_MM,) * 3)(subject))
    box = np.argwhere(canonical.label.data[0].numpy() == 1)
    roi_image, _, meta = infer_utils.data_preprocess(subject, meta, category_index=1,
                                                     target_spacing=(SPACING_MM,) * 3, crop_size=CROP)
    # Where the crop starts on the canonical grid, from the affines (the padding and cropping parameters
    # infer_utils records are those of a centred crop, not of the label-centred one it applies).
    origin = np.linalg.inv(meta["canonical_subject_affine"]) @ meta["roi_subject_affine"][:, 3]
    start = np.round(origin[:3]).astype(np.int64)
    back = infer_utils.data_postprocess(fixed_crop_mask(), meta)  # (K, J, I) like the image array
    hits = np.argwhere(back)
    low, high = hits.min(0), hits.max(0) + 1
    samples, sums = summary(roi_image.numpy())
    return {
        f"{case}_dtype": np.array(str(subject.image.data.dtype)),
        f"{case}_canonical_shape": np.array(meta["canonical_subject_shape"]),
        f"{case}_label_box": np.array([box.min(0), box.max(0)]),
        f"{case}_crop_start": np.array(start),
        f"{case}_crop_samples": samples,
        f"{case}_crop_sums": sums,
        f"{case}_back_box": np.array([low, high]),
        f"{case}_back_mask": mask_signature(back),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    sys.path.insert(0, str(Path(argv[0]).resolve()))
    import medim
    import torch
    import torchio
    from utils import infer_utils

    torch.set_num_threads(1)
    out = network_part(infer_utils)
    for case in CASES:
        out.update(procedure_part(infer_utils, Path(argv[1]), case))
    np.savez_compressed(OUTPUT, torch_version=np.array(torch.__version__), torchio_version=np.array(torchio.__version__),
                        medim_version=np.array(getattr(medim, "__version__", "0.1.2")),
                        config=np.array(repr(CONFIG)), **out)
    digest = hashlib.sha256(OUTPUT.read_bytes()).hexdigest()[:12]
    print(f"torch {torch.__version__}, torchio {torchio.__version__}: wrote {OUTPUT} "
          f"({OUTPUT.stat().st_size:,} bytes, sha256 {digest}); masks "
          f"{[int(out[f'mask_{n}'][0]) for n in (1, 2, 3)]} of {math.prod((CONFIG['img_size'],) * 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
