"""VISTA3D checkpoints: the MONAI bundle ``vista3d``'s ``models/model.pt``, a plain state_dict of MONAI's
``VISTA3D`` (``image_encoder.*``, ``class_head.*``, ``point_head.*``), read with ``weights_only=True``.

The bundle loads it with ``CheckpointLoader(load_dict={"model": network})``, which also takes the state_dict
under a ``model`` key; a ``state_dict`` key or DataParallel's ``module.`` prefix are accepted the same way.

The card records what the bundle's configs say (model zoo ``models/vista3d/configs``, bundle 0.5.x):

- ``inference.json``: ``Spacingd`` to 1.5 mm (bilinear), then ``ScaleIntensityRanged`` a_min
  -963.8247715525971, a_max 1053.678477684517 -> [0, 1], clip (so the window is applied on the resampled
  grid), ``Orientationd`` RAS; ``patch_size`` 128^3; the 117 ``everything_labels`` segmented when no class
  is asked for; one sigmoid per class (``VistaPostTransformd``: background where every logit is <= 0,
  else the class of the largest logit).
- windows: without clicks the bundle's ``Vista3dInferer`` (``scripts/inferer.py``) runs
  ``SlidingWindowInfererAdapt(roi_size, sw_batch_size)`` with MONAI's defaults, i.e. ``sliding_window_inference``
  with overlap 0.25, uniform weights (``mode="constant"``) and zero padding (``padding_mode="constant"``,
  ``cval=0``; its ``overlap: 0.3`` in ``inference.json`` reaches the click inferer only): the card's step is
  0.75 with the ``fixed_stride`` layout, ``constant`` blending and ``zeros`` padding, so a job slides exactly
  the bundle's windows. (The research code's ``scripts/infer.py`` in Project-MONAI/VISTA slides with
  Gaussian weights and overlap 0.625 instead.) The bundle's ``CropForegroundd`` (voxels above 0 HU after
  resampling, 10 voxels margin) is not done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import strip_prefix
from tsfm_backend.model_card import ModelCard

REQUIRED_KEYS = ("image_encoder.encoder.conv_init.weight", "class_head.class_embeddings.weight",
                 "point_head.class_embeddings.weight")
WRAPPER_KEYS = ("model", "state_dict")
DEFAULT_ID = "vista3d"
SPACING_MM = (1.5, 1.5, 1.5)
PATCH_SIZE = (128, 128, 128)
NORMALIZATION = {"scheme": "hu_window", "lower": -963.8247715525971, "upper": 1053.678477684517,
                 "output_range": [0.0, 1.0], "after_resampling": True}
# The bundle's sliding_window_inference settings: overlap 0.25, mode "constant", padding_mode "constant" (0).
SLIDING_WINDOW = {"sliding_window_step": 0.75, "sliding_window_layout": "fixed_stride",
                  "sliding_window_blend": "constant", "sliding_window_padding": "zeros"}
# Not in the weights: the point head's last supported class (``vista3d132(last_supported=132)``).
LAST_SUPPORTED = 132
LICENSE = ("NVIDIA non-commercial licence (research or evaluation use only); the publisher names it "
           "'NCLS v1' in the bundle README and 'NVIDIA OneWay Noncommercial License' in the VISTA repository")
BUNDLE_INFERENCE = {"windows": "SlidingWindowInfererAdapt defaults: overlap 0.25, constant weights, zero padding",
                    "crop_foreground": "voxels above 0 HU after resampling, margin 10; not done here",
                    "source": "model zoo models/vista3d/scripts/inferer.py and configs/inference.json, bundle 0.5.4"}


def _weights(checkpoint: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict inside ``checkpoint`` (plain, or under ``model``/``state_dict``), prefix stripped."""
    if not isinstance(checkpoint, dict):
        return None
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return None
    return strip_prefix(checkpoint)


def matches(checkpoint: Any) -> bool:
    weights = _weights(checkpoint)
    return weights is not None and all(key in weights for key in REQUIRED_KEYS)


def architecture_of(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``vista3d`` family's kwargs the weights tell: features, input channels, blocks per level, class slots."""
    from tsfm_backend.models import vista3d

    stem = weights["image_encoder.encoder.conv_init.weight"]
    blocks, level = [], 0
    while any(k.startswith(f"image_encoder.encoder.layers.{level}.") for k in weights):
        prefix = f"image_encoder.encoder.layers.{level}.blocks."
        blocks.append(len({k[len(prefix):].split(".")[0] for k in weights if k.startswith(prefix)}))
        level += 1
    if not blocks:
        raise CheckpointError("VISTA3D weights without image_encoder.encoder.layers.*")
    found = {"encoder_embed_dim": int(stem.shape[0]), "blocks_down": blocks,
             "n_classes": int(weights["class_head.class_embeddings.weight"].shape[0]),
             "last_supported": LAST_SUPPORTED}
    preset = next((name for name, values in vista3d.PRESETS.items()
                   if all(list(values[k]) == found[k] if k == "blocks_down" else values[k] == found[k] for k in values)),
                  None)
    architecture: dict[str, Any] = {"preset": preset} if preset else found
    if int(stem.shape[1]) != 1:
        architecture["in_channels"] = int(stem.shape[1])
    return architecture


def card_for(model_id: str, architecture: dict[str, Any], source: str) -> ModelCard:
    """The card of a VISTA3D: the bundle's preprocessing, the 117 classes it segments, its licence."""
    from tsfm_backend.models import vista3d

    names = vista3d.class_names()
    prompts = architecture.get("class_prompts") or vista3d.everything_classes()
    return ModelCard(
        id=model_id, family="vista3d", architecture=architecture, kind="automatic",
        classes={int(c): names.get(int(c), f"class {c}") for c in prompts},
        in_channels=int(architecture.get("in_channels", 1)), spacing=SPACING_MM, axis_order="ras",
        normalization=dict(NORMALIZATION), patch_size=PATCH_SIZE, **SLIDING_WINDOW,
        output="sigmoid", license=LICENSE,
        provenance={"format": "vista3d", "source": source, "bundle_inference": BUNDLE_INFERENCE},
        description="VISTA3D: 117 CT structures automatically (the bundle's everything_labels); clicks refine any structure",
    )


def from_checkpoint(checkpoint: Any, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of a VISTA3D ``model.pt`` already read with ``torch_load``."""
    weights = _weights(checkpoint)
    if weights is None:
        raise CheckpointError(f"{path}: not a VISTA3D state_dict")
    try:
        architecture = architecture_of(weights)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return weights, card_for(model_id or DEFAULT_ID, architecture, str(path))
