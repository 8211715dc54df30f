"""Write ``sam3d_network_reference.npz``: 3DSAM-adapter's own network (image encoder, prompt encoder, mask
decoder) on one small crop, with weights from a formula.

``test_sam3d_network_reference.py`` writes the same weights in the authors' checkpoint layout
(``{"encoder_dict", "decoder_dict", "feature_dict": [4 prompt encoders]}``), imports them and compares the
logits. ``make_sam3d_published_reference.py`` covers the procedure around the network; this file covers
the network. The authors' code (``med-air/3DSAM-adapter`` @f4fb8f3, folder ``3DSAM-adapter/``) is
imported from the folder given on the command line, never copied here. Steps::

    python3 -m venv /tmp/scratch_sam3d
    /tmp/scratch_sam3d/bin/pip install torch==2.13.0 "numpy<2"
    /tmp/scratch_sam3d/bin/pip install --no-deps segment-anything==1.0
    /tmp/scratch_sam3d/bin/python Testing/backend/reference_outputs/make_sam3d_network_reference.py \\
        /tmp/authors/3DSAM-adapter

What runs is ``test.py``'s network, built as ``test.py`` builds it (``ImageEncoderViT_3d_v2``, four
``PromptEncoder(TwoWayTransformer)``, ``VIT_MLAHead_h``) with smaller sizes, and called as ``test.py``'s
``model_predict`` calls it. Their code fixes some sizes to the released 128 crop (32^3 tokens); for the
32 crop here (8^3 tokens) the same quantities are given for the smaller grid:

- ``model_predict`` upsamples by ``512 / 128``, resizes the image for the decoder by ``64 / 128`` and
  upsamples the logits by ``128 // 64``: the ratios 4, 1/2 and 2 are used;
- ``PromptEncoder.forward`` takes the token grid as ``feat_size`` (default ``[32, 32, 32]``): 8^3 is passed;
- ``Block_3d`` builds the shifted-window mask for a 32^3 grid: the shifted blocks' ``attn_mask`` is
  rebuilt by the same construction (their region slices, their ``window_partition``) for 8^3.
- ``segment_anything`` imports torchvision, of which no CPU build exists for torch 2.13: ``batched_nms``,
  ``box_area`` (``torchvision.ops.boxes``), ``resize`` and ``to_pil_image``
  (``torchvision.transforms.functional``) are stubs that raise when called; only SAM's automatic mask
  generator and image transforms use them, never the network.

Embedding width (768, hard-coded in their neck), depth (12) and prompt width (256) are the released ones;
the MLP ratio (1/4), prompt MLP (256) and decoder channels (32) are smaller, the windows 4 (shifted by 2)
and the relative positions sized for 6-token windows and a 256 pixel SAM image, so that every table is
interpolated. Weights come from each ``Sam3D`` state_dict name (``image_encoder.<their key>`` ...) by
``reference_value`` of ``make_suprem_swin_reference.py``; the four prompt encoders get the same. The
crop (float16 values, 3 different channels) and the clicks are rebuilt by this file; the logits are
stored at every second voxel along each axis (``stored``).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("sam3d_network_reference.npz")
# Keywords of our ``Sam3D``; the authors' constructors get the same sizes in ``main``.
ARCHITECTURE = {
    "crop_size": 32, "upsample": 4, "patch_size": 16, "num_slice": 16, "in_chans": 3, "embed_dim": 768,
    "depth": 12, "num_heads": 12, "mlp_ratio": 0.25, "out_chans": 256, "pretrain_img_size": 256,
    "window_size": 6, "cubic_window_size": 4, "global_attn_indexes": [2, 5, 8, 11], "prompt_depth": 2,
    "prompt_heads": 8, "prompt_mlp_dim": 256, "decoder_channels": 32, "num_classes": 2,
}
TOKENS = 8  # crop 32 x upsample 4 / patch 16
# Crop voxels (a0, a1, a2) = (D, H, W), per click set.
CLICKS = {"one": [(15, 9, 20)], "three": [(4, 9, 20), (15, 28, 3), (27, 16, 11)]}
INPUT_SEED = 20240616

sys.path.insert(0, str(Path(__file__).parent))
COMMON = importlib.import_module("make_suprem_swin_reference")
reference_weights, weights_digest, splitmix_uniform = (COMMON.reference_weights, COMMON.weights_digest,
                                                       COMMON.splitmix_uniform)


def reference_input() -> np.ndarray:
    """(1, 3, S, S, S) float16 crop, axes (D, H, W): a z-scored CT-like blob, a different offset per channel."""
    size = ARCHITECTURE["crop_size"]
    d, h, w = np.meshgrid(*(np.linspace(-1.0, 1.0, size),) * 3, indexing="ij")
    blob = 2.0 * np.exp(-((d - 0.1) ** 2 + (h + 0.2) ** 2 + (w - 0.3) ** 2) / 0.2)
    noise = 0.3 * splitmix_uniform(size**3, INPUT_SEED).reshape((size,) * 3)
    channels = [blob - 0.5 + 0.4 * h + noise + 0.1 * c for c in range(3)]
    return np.stack(channels).astype(np.float16)[None]


def stored(logits: np.ndarray) -> np.ndarray:
    """The part of (B, classes, S, S, S) logits that the file keeps."""
    return logits[:, :, ::2, ::2, ::2]


def _stub_torchvision() -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub: not available")

    names = {"torchvision.ops.boxes": ("batched_nms", "box_area"),
             "torchvision.transforms.functional": ("resize", "to_pil_image")}
    for name in ("torchvision", "torchvision.ops", "torchvision.transforms", *names):
        module = types.ModuleType(name)
        module.__path__ = []
        for attribute in names.get(name, ()):
            setattr(module, attribute, unavailable)
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, module)


def _shift_mask(window_partition, grid: int, window: int, shift: int):
    """``Block_3d``'s shifted-window mask, its construction with ``grid`` for the literal 32."""
    import torch

    img_mask = torch.zeros((1, grid, grid, grid, 1))
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for h in slices:
        for w in slices:
            for d in slices:
                img_mask[:, h, w, d, :] = count
                count += 1
    mask_windows = window_partition(img_mask, window)[0].view(-1, window**3)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    _stub_torchvision()
    sys.path.insert(0, str(Path(argv[0]).resolve()))
    import torch
    import torch.nn.functional as F
    from modeling.image_encoder import ImageEncoderViT_3d_v2, window_partition
    from modeling.mask_decoder import VIT_MLAHead_h
    from modeling.prompt_encoder import PromptEncoder, TwoWayTransformer

    torch.set_num_threads(1)
    a = ARCHITECTURE
    encoder = ImageEncoderViT_3d_v2(
        depth=a["depth"], embed_dim=a["embed_dim"], img_size=a["pretrain_img_size"], mlp_ratio=a["mlp_ratio"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a["num_heads"], patch_size=a["patch_size"],
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=a["global_attn_indexes"], window_size=a["window_size"],
        cubic_window_size=a["cubic_window_size"], out_chans=a["out_chans"], num_slice=a["num_slice"],
        patch_depth=TOKENS)
    for block in encoder.blocks:
        if block.attn_mask is not None:
            block.attn_mask = _shift_mask(window_partition, TOKENS, block.window_size, block.shift_size)
    prompt_encoders = [PromptEncoder(transformer=TwoWayTransformer(
        depth=a["prompt_depth"], embedding_dim=a["out_chans"], mlp_dim=a["prompt_mlp_dim"], num_heads=a["prompt_heads"]))
        for _ in range(4)]
    decoder = VIT_MLAHead_h(img_size=96, mla_channels=a["out_chans"], mlahead_channels=a["decoder_channels"],
                            num_classes=a["num_classes"])

    def load(module, prefix: str) -> dict:
        state = module.state_dict()
        named = reference_weights({f"{prefix}{k}": v for k, v in state.items() if not k.endswith("attn_mask")})
        weights = {k[len(prefix):]: v for k, v in named.items()}
        module.load_state_dict({**state, **weights}, strict=True)
        return named

    weights = {**load(encoder, "image_encoder."), **load(prompt_encoders[3], "prompt_encoder."),
               **load(decoder, "mask_decoder.")}
    for unused in prompt_encoders[:3]:
        load(unused, "prompt_encoder.")
    for module in (encoder, decoder, *prompt_encoders):
        module.eval()

    img = torch.from_numpy(reference_input().astype(np.float32))
    size = a["crop_size"]
    outputs = {}
    with torch.no_grad():
        out = F.interpolate(img.float(), scale_factor=a["upsample"], mode="trilinear")  # 512 / 128
        batch_features, feature_list = encoder(out[0].transpose(0, 1))
        feature_list.append(batch_features)
        img_resize = F.interpolate(img[0, 0].permute(1, 2, 0).unsqueeze(0).unsqueeze(0), scale_factor=0.5,
                                   mode="trilinear")  # 64 / 128
        for name, clicks in CLICKS.items():
            # test.py's points: float crop voxels in the order (D, W, H), shape (1, N, 3).
            points = torch.tensor([[d, w, h] for d, h, w in clicks], dtype=torch.float32)[None]
            prompted = prompt_encoders[3](feature_list[3], points.clone(), [size] * 3, feat_size=[TOKENS] * 3)
            masks = decoder([*feature_list[:3], prompted, img_resize], 2, 2)  # 128 // 64
            outputs[name] = masks.permute(0, 1, 4, 2, 3).numpy()
    np.savez_compressed(
        OUTPUT,
        input_sha256=np.array(hashlib.sha256(reference_input().tobytes()).hexdigest()),
        **{f"logits_{name}": stored(y).astype(np.float32) for name, y in outputs.items()},
        weights_sha256=np.array(weights_digest(weights)),
        torch_version=np.array(torch.__version__),
        config=np.array("Sam3D(" + repr(ARCHITECTURE) + ")"),
    )
    print(f"torch {torch.__version__}: logits {[y.shape for y in outputs.values()]}, std "
          f"{[round(float(y.std()), 4) for y in outputs.values()]}, {math.fsum(v.numel() for v in weights.values()):,.0f} "
          f"weights; wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
