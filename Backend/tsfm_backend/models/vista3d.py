"""VISTA3D (He et al., CVPR 2025; NVIDIA and MONAI): CT segmentation by class prompt and by 3D clicks.

The network is MONAI's own ``monai.networks.nets.vista3d.VISTA3D``, put together as MONAI's
``vista3d132`` (the factory the MONAI bundle ``vista3d`` calls in ``configs/inference.json``): a
SegResNetDS2 image encoder (``encoder_embed_dim`` features, ``blocks_down`` per level, instance norm),
``ClassMappingClassify`` (automatic branch: one mask per class id) and ``PointMappingSAM`` (interactive
branch: a SAM-style two-way transformer over click embeddings). Weight names are therefore those of the
released ``model.pt``: ``image_encoder.*``, ``class_head.*``, ``point_head.*``.

``Vista3DNetwork`` adds one thing to MONAI's class: called with an image alone, it returns the automatic
logits of its ``class_prompts`` as (B, K, X, Y, Z), one sigmoid per class in increasing class id, which is
what the sliding window needs; called with prompts, it is VISTA3D's own ``forward``. Images are MONAI's
(X, Y, Z) arrays reoriented to RAS (the card's ``axis_order: ras``); every spatial size must be a multiple
of ``divisor`` (2 ** (levels - 1)).

The class table (132 ids of the bundle's ``labels.json``, the 117 it segments when no class is asked for,
the five it does not support) is data: ``resources/vista3d_labels.json``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import SegResNetDS2
from monai.networks.nets.vista3d import VISTA3D, ClassMappingClassify, PointMappingSAM

LABELS_FILE = Path(__file__).resolve().parents[1] / "resources" / "vista3d_labels.json"

# ``vista3d132``: the released network. ``tiny``: the same layout, small enough for tests on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "vista3d132": {"encoder_embed_dim": 48, "blocks_down": (1, 2, 2, 4, 4), "n_classes": 512, "last_supported": 132},
    "tiny": {"encoder_embed_dim": 8, "blocks_down": (1, 1, 1), "n_classes": 512, "last_supported": 132},
}
ENCODER_KEYS = ("image_encoder.",)
STEM_KEYS = ("image_encoder.encoder.conv_init.",)


@functools.cache
def _label_table() -> dict[str, Any]:
    return json.loads(LABELS_FILE.read_text(encoding="utf-8"))


def class_names() -> dict[int, str]:
    """Every class id of the released model -> its name (132 ids, 1 = liver ... 132 = airway)."""
    return {int(key): name for key, name in _label_table()["labels"].items()}


def everything_classes() -> tuple[int, ...]:
    """The 117 class ids the bundle segments when no class is asked for (``everything_labels``)."""
    return tuple(int(value) for value in _label_table()["everything"])


def unsupported_classes() -> frozenset[int]:
    """Legacy ids kept in the table that the released model was not trained to segment."""
    return frozenset(int(value) for value in _label_table()["unsupported"])


class Vista3DNetwork(VISTA3D):
    """MONAI's VISTA3D whose plain call segments ``class_prompts`` automatically.

    Args:
        image_encoder, class_head, point_head: MONAI's modules (see ``build``).
        class_prompts: the class ids (sorted, unique) the automatic call segments, one output channel each.
        divisor: every spatial size the network takes must be a multiple of it.
    """

    def __init__(self, image_encoder: torch.nn.Module, class_head: torch.nn.Module, point_head: torch.nn.Module,
                 class_prompts: Sequence[int], divisor: int) -> None:
        super().__init__(image_encoder=image_encoder, class_head=class_head, point_head=point_head)
        # Not a weight: the card says which classes a model segments, so the released names stay the only keys.
        self.register_buffer("class_prompts", torch.tensor(list(class_prompts), dtype=torch.long), persistent=False)
        self.divisor = (divisor, divisor, divisor)

    def forward(self, input_images: torch.Tensor, **prompts: Any) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, K, X, Y, Z) automatic logits of ``class_prompts`` when no prompt is given;
        with prompts (``point_coords``, ``point_labels``, ``class_vector``, ``patch_coords``...), MONAI's forward."""
        if prompts:
            return super().forward(input_images, **prompts)
        return super().forward(input_images, class_vector=self.class_prompts[:, None], transpose=True)

    def point_logits(self, patch: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(1, C, X, Y, Z) patch and its clicks -> (X, Y, Z) logits of the clicked object.

        ``points`` (N, 3) are voxel coordinates in the patch, ``labels`` (N,) 1 (object) or 0 (not the
        object); the class is left open (``prompt_class`` None), as the bundle does for clicks alone.
        """
        logits = super().forward(patch, point_coords=points[None], point_labels=labels[None], transpose=True)
        return logits[0, 0]


def build(
    preset: str | None = None,
    encoder_embed_dim: int = 48,
    blocks_down: Sequence[int] = (1, 2, 2, 4, 4),
    n_classes: int = 512,
    last_supported: int = 132,
    in_channels: int = 1,
    class_prompts: Sequence[int] | None = None,
) -> Vista3DNetwork:
    """A VISTA3D from a preset name plus explicit arguments (``vista3d132``'s values by default).

    ``class_prompts`` (default: the bundle's 117 ``everything_classes``) are the class ids the automatic
    call segments; each must be below ``n_classes``. The point head treats ids above ``last_supported``
    as new (zero-shot) classes.
    """
    settings = {"encoder_embed_dim": encoder_embed_dim, "blocks_down": tuple(blocks_down),
                "n_classes": n_classes, "last_supported": last_supported}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown VISTA3D preset {preset!r}; choose one of {sorted(PRESETS)}")
        settings.update(PRESETS[preset])
    prompts = sorted({int(c) for c in (everything_classes() if class_prompts is None else class_prompts)})
    if not prompts or prompts[0] < 1 or prompts[-1] >= settings["n_classes"]:
        raise ValueError(f"class_prompts must be class ids from 1 to {settings['n_classes'] - 1}, got {prompts}")
    features = int(settings["encoder_embed_dim"])
    # The point head's attention halves the features and splits them over 4 heads.
    if features % 8:
        raise ValueError(f"encoder_embed_dim must be a multiple of 8, got {features}")
    encoder = SegResNetDS2(in_channels=in_channels, blocks_down=settings["blocks_down"], norm="instance",
                           out_channels=features, init_filters=features, dsdepth=1)
    point_head = PointMappingSAM(feature_size=features, n_classes=settings["n_classes"],
                                 last_supported=settings["last_supported"])
    class_head = ClassMappingClassify(n_classes=settings["n_classes"], feature_size=features, use_mlp=True)
    return Vista3DNetwork(encoder, class_head, point_head, prompts, divisor=2 ** (len(settings["blocks_down"]) - 1))
