"""Write ``sam3d_published_reference.npz``: 3DSAM-adapter's own ``test.py`` run on small synthetic CTs.

``test_sam3d_published_reference.py`` checks ``tsfm_backend.inference.sam3d_published`` against it. What
runs is the authors' code itself, unchanged (``med-air/3DSAM-adapter`` @f4fb8f3, folder
``3DSAM-adapter/``): ``dataset/base_dataset.py`` and ``dataset/datasets.py`` read, resample, clip and
z-score the NIfTI files, and ``test.py``'s ``main()`` places the crop around the sampled clicks, pads,
pastes the probability back, resizes it to the CT grid and thresholds it. Only the network is replaced,
since no released weights are at hand and the procedure around it is what is compared:

- ``modeling.image_encoder`` / ``prompt_encoder`` / ``mask_decoder`` are stand-ins whose decoder returns the
  logits (0, crop) (so the object probability is ``softmax(0, x)[1]`` of the crop's normalised
  intensity); ``torch.load`` returns empty state dicts for them;
- the x4 upsampling in ``model_predict`` (``F.interpolate(scale_factor=512 / patch_size)``), which feeds
  only the network, is intercepted to record the crop instead of building a 512^3 tensor;
- ``surface_distance`` (DeepMind's, not on PyPI) and ``medpy`` (imported by ``utils/util.py``, unused
  here) are stubs; the metric values are not compared.

Recorded per case: the loader's resampled, normalised image; the resampled-grid clicks ``test.py`` drew
(``np.random.choice`` is wrapped to record its draw); the clicks as passed to the prompt encoder; the
crop's SHA-256 (float32 bytes); the probability on the CT grid and the final mask.

Run it in an environment of its own, never the project's (MONAI 1.1 needs numpy < 2)::

    python3 -m venv /tmp/scratch_sam3d
    /tmp/scratch_sam3d/bin/pip install torch==2.13.0 "numpy<2" nibabel "monai==1.1.0" scipy
    git -C <3DSAM-adapter clone> archive f4fb8f3 3DSAM-adapter | tar -x -C /tmp/authors
    /tmp/scratch_sam3d/bin/python Testing/backend/reference_outputs/make_sam3d_published_reference.py \\
        /tmp/authors/3DSAM-adapter
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("sam3d_published_reference.npz")
PATCH = 32  # --rand_crop_size; the published models use 128, the procedure is the same
# name -> (shape (D, H, W), spacing (D, H, W) mm, label voxels (D, H, W) on the CT grid, clicks drawn, seed)
CASES = {
    # isotropic path; the crop passes the grid on both sides along H and W and below along D
    "single": ((12, 20, 18), (2.5, 0.8, 0.75), [(3, 10, 9)], 1, 0),
    # three label voxels near borders (one, (1, 2, 3), is read by no resampled voxel: the grid shrinks along
    # H and W), three clicks drawn: the crop is centred on their midpoint
    "three": ((12, 20, 18), (2.5, 0.8, 0.75), [(1, 2, 3), (10, 17, 4), (6, 5, 16)], 3, 2),
    # spacing ratio above 8: the loader's slice-wise bilinear then trilinear path
    "aniso": ((6, 30, 28), (5.0, 0.5, 0.5), [(2, 14, 20)], 1, 2),
}


def synthetic_ct(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smooth HU values with structure (a bright ball, a gradient) plus noise, a few below the window."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ball = (grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2) < 0.35
    image = -100.0 + 150.0 * (grid[1] + 1) + 120.0 * ball + rng.normal(0, 25, shape)
    return image.astype(np.float32)


def stub_modules(record: dict) -> None:
    import torch
    from torch import nn

    class ImageEncoder(nn.Module):
        def __init__(self, **_: object) -> None:
            super().__init__()

        def forward(self, x):
            return torch.zeros(1), [torch.zeros(1), torch.zeros(1), torch.zeros(1)]

    class PromptEncoder(nn.Module):
        def __init__(self, **_: object) -> None:
            super().__init__()

        def forward(self, feature, points, sizes):
            record["prompt_points"] = points.detach().clone()
            return feature

    class Head(nn.Module):
        def __init__(self, **_: object) -> None:
            super().__init__()

        def forward(self, features, num_classes, scale):
            crop = record["crop"][0, 0].permute(1, 2, 0)  # (d, h, w) -> the decoder's (h, w, d)
            return torch.stack([torch.zeros_like(crop), crop])[None]

    modules = {
        "modeling": types.ModuleType("modeling"),
        "modeling.image_encoder": types.ModuleType("modeling.image_encoder"),
        "modeling.prompt_encoder": types.ModuleType("modeling.prompt_encoder"),
        "modeling.mask_decoder": types.ModuleType("modeling.mask_decoder"),
        "surface_distance": types.ModuleType("surface_distance"),
        "surface_distance.metrics": types.ModuleType("surface_distance.metrics"),
        "medpy": types.ModuleType("medpy"),
    }
    modules["modeling.image_encoder"].ImageEncoderViT_3d_v2 = ImageEncoder
    modules["modeling.prompt_encoder"].PromptEncoder = PromptEncoder
    modules["modeling.prompt_encoder"].TwoWayTransformer = lambda **_: None
    modules["modeling.mask_decoder"].VIT_MLAHead_h = Head
    modules["surface_distance"].compute_surface_distances = lambda *a, **k: None
    modules["surface_distance"].metrics = modules["surface_distance.metrics"]
    modules["surface_distance.metrics"].compute_surface_dice_at_tolerance = lambda *a, **k: 0.0
    modules["medpy"].metric = None
    sys.modules.update(modules)


def run_case(authors: Path, name: str, work: Path) -> dict[str, np.ndarray]:
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    shape, spacing, label_voxels, num_prompts, seed = CASES[name]
    folder = work / name
    (folder / "snap" / "colon").mkdir(parents=True)
    image = synthetic_ct(shape, seed)
    label = np.zeros(shape, dtype=np.float32)
    for voxel in label_voxels:
        label[voxel] = 1  # colon's target_class
    # The colon loader transposes the NIfTI (x, y, z) to (D, H, W) = (z, y, x) (spatial_index [2, 1, 0]).
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), folder / "seg.nii.gz")
    with open(folder / "split.pkl", "wb") as handle:
        pickle.dump([{"test": {0: ("/img.nii.gz", "/seg.nii.gz")}}], handle)

    record: dict = {}
    stub_modules(record)  # the stand-in head reads the crop the upsampling hook records
    for module in ("test", "dataset", "dataset.datasets", "dataset.base_dataset"):
        sys.modules.pop(module, None)
    original_interpolate = F.interpolate
    original_choice = np.random.choice

    def interpolate(input, size=None, scale_factor=None, mode="nearest", **kwargs):
        if scale_factor == 512 / PATCH:  # model_predict's x4 upsampling: feeds only the network
            record["crop"] = input.detach().clone()
            return input
        out = original_interpolate(input, size=size, scale_factor=scale_factor, mode=mode, **kwargs)
        if mode == "nearest" and size is not None:
            record["prompt"] = out[0].detach().clone()  # test.py:156 takes [0]
        if mode == "trilinear" and size is not None and input.shape[1] == 1 and input.dim() == 5:
            record["final_pred"] = out.detach().clone()
        return out

    def choice(*args, **kwargs):
        record["sample"] = original_choice(*args, **kwargs)
        return record["sample"]

    F.interpolate = interpolate
    np.random.choice = choice
    torch_load = torch.load
    torch.load = lambda *a, **k: {"encoder_dict": {}, "decoder_dict": {}, "feature_dict": [{}] * 4}
    sys.path.insert(0, str(authors))
    cwd = os.getcwd()
    try:
        from dataset.datasets import load_data_volume

        loader = load_data_volume(data="colon", batch_size=1, path_prefix=str(folder), augmentation=False,
                                  split="test", rand_crop_spatial_size=(PATCH,) * 3, convert_to_sam=False,
                                  do_test_crop=False, deterministic=True, num_worker=0)
        prepared = loader.dataset[0][0][0].numpy()
        import test as authors_test

        np.random.seed(seed)
        sys.argv = ["test.py", "--data", "colon", "--snapshot_path", str(folder / "snap"), "--data_prefix",
                    str(folder), "--rand_crop_size", str(PATCH), "--device", "cpu", "--num_prompts",
                    str(num_prompts)]
        authors_test.main()
    finally:
        F.interpolate = original_interpolate
        np.random.choice = original_choice
        torch.load = torch_load
        os.chdir(cwd)
    prompt = record["prompt"]
    where = torch.where(prompt == 1)
    sample = record["sample"]
    clicks = np.stack([where[1][sample].numpy(), where[2][sample].numpy(), where[3][sample].numpy()], 1)
    crop = record["crop"].numpy().astype(np.float32)
    final = record["final_pred"][0, 0].numpy()
    return {
        f"{name}_image": image,
        f"{name}_spacing": np.asarray(spacing, dtype=np.float64),
        f"{name}_label_voxels": np.asarray(label_voxels, dtype=np.int64),
        f"{name}_prepared": prepared.astype(np.float32),
        f"{name}_clicks": clicks.astype(np.int64),
        f"{name}_prompt_points": record["prompt_points"].numpy().reshape(-1, 3).astype(np.int64),
        f"{name}_crop_sha256": np.asarray(hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()),
        f"{name}_crop_shape": np.asarray(crop.shape),
        f"{name}_probability": final.astype(np.float32),
        f"{name}_mask": (final > 0.5).astype(np.uint8),
    }


def main() -> None:
    authors = Path(sys.argv[1]).resolve()
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as work:
        for name in CASES:
            arrays.update(run_case(authors, name, Path(work)))
    import monai
    import torch

    arrays["versions"] = np.asarray(f"torch {torch.__version__}, monai {monai.__version__}, numpy {np.__version__}")
    np.savez_compressed(OUTPUT, **arrays)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
