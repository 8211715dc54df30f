"""The model card: everything inference needs to know about a set of weights, stored beside them.

A card is plain JSON data. It names the architecture (family + constructor kwargs), the classes,
and the exact preprocessing the weights were trained with (axis order, spacing, normalisation,
patch size), so the same file drives the backend, the server and training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FORMAT_VERSION = 1

KINDS = ("automatic", "promptable")
AXIS_ORDERS = ("kji", "ras")
NORMALIZATION_SCHEMES = ("zscore", "ct_clip_zscore", "hu_window", "by_modality", "none")
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")
# How a promptable sam3d model runs a click (``tsfm_backend.inference.interactive``): ``published`` as the
# authors' test.py (whole volume resampled, crop on the clicks' midpoint; ``inference.sam3d_published``),
# ``cached`` a cube of the card's patch at its spacing whose image embedding serves further clicks.
PROCEDURES = ("published", "cached")
# How automatic segmentation slides its windows (``tsfm_backend.inference.sliding_window``). The defaults are
# nnU-Net's; MONAI's ``sliding_window_inference`` is ``fixed_stride`` with ``constant`` or ``gaussian`` blending.
WINDOW_BLENDS = ("gaussian", "constant")
WINDOW_LAYOUTS = ("even", "fixed_stride")
WINDOW_PADDINGS = ("zeros", "replicate")


class ModelCardError(ValueError):
    """A model card that is missing a field or holds a value the backend cannot use."""


class UntrainedHeadError(ModelCardError):
    """A model whose output head was created at import and never trained: it must be fine-tuned first."""


@dataclass
class ModelCard:
    """Description of one model.

    Attributes:
        id: short name used on the command line and over HTTP (letters, digits, ``-``, ``_``, ``.``).
        family: architecture family, a key of ``tsfm_backend.models`` (``stunet``, ``tsfm``, ...).
        architecture: constructor keyword arguments of the family's network.
        kind: ``automatic`` (whole-volume labels) or ``promptable`` (clicks and boxes).
        classes: label value -> name; 0 is background and is not listed.
        in_channels: number of image channels the network takes.
        spacing: target voxel spacing in mm in (K, J, I) = (z, y, x) order; ``None`` keeps the input's.
        axis_order: ``kji`` (arrays as stored, SimpleITK order) or ``ras`` (reoriented to RAS first).
        normalization: ``{"scheme": one of NORMALIZATION_SCHEMES, ...parameters}``; parameters are
            ``lower``/``upper`` (HU clip or window), ``output_range`` (what a ``hu_window`` maps to,
            default [0, 1]), ``mean``/``std`` (dataset statistics) and ``after_resampling`` (true:
            normalise on the network grid, after resampling, as MONAI pipelines that resample before
            ``ScaleIntensityRange`` do; default false: normalise first, the nnU-Net order);
            ``by_modality`` holds one such entry per modality (``tsfm_backend.modality``).
        patch_size: sliding-window patch (or interactive crop) in voxels, (K, J, I) order.
        sliding_window_step: the window stride, as a fraction of the patch, that automatic segmentation
            uses unless a job asks for another (0.5 = 50 % overlap, nnU-Net's; 0.25 = MONAI's
            ``overlap=0.75``).
        sliding_window_blend: how overlapping windows are averaged: ``gaussian`` (nnU-Net's importance
            map, sigma = patch / 8) or ``constant`` (every voxel of a window weighs the same, MONAI's
            ``mode="constant"``).
        sliding_window_layout: where windows start along an axis: ``even`` (as many as the step asks
            for, spread evenly, nnU-Net's) or ``fixed_stride`` (every ``int(patch * step)`` voxels, the
            last one flush with the end, MONAI's).
        sliding_window_padding: how an image smaller than the patch is padded (half before, half
            after) on the network grid: ``zeros`` or ``replicate`` (edge voxels repeated).
        output: ``softmax`` (one label per voxel) or ``sigmoid`` (independent classes).
        license: license of the weights (SPDX id or a short phrase).
        provenance: where the weights came from: source file, training data, commit, metrics.
        description: one sentence for people.
        head_trained: False when the output head was made (randomly initialised) by an importer because
            the checkpoint holds only a backbone; such a model is a starting point for fine-tuning and
            segments nothing until then (``require_trained_head``).
        procedure: for promptable ``sam3d`` models, ``published`` (the authors' evaluation procedure,
            exactly) or ``cached`` (faster further clicks in one cube); None means ``published``.
        local_corrections: for promptable models, whether a click on an object that already has a mask
            changes it only by the changes of its sign connected to the click (``inference.corrections``),
            so that a correction cannot alter distant parts of the object, nor remove when it asks to add.
        first_mask_logit: for ``click_unet`` models, the logit above which a voxel joins an object's
            first mask (the prediction for an object whose mask is empty); later predictions threshold
            at 0 (probability 0.5). A negative value widens first masks of a network that under-segments
            objects it is first pointed at; the card's provenance says how it was chosen.
    """

    id: str
    family: str
    architecture: dict[str, Any]
    kind: str = "automatic"
    classes: dict[int, str] = field(default_factory=dict)
    in_channels: int = 1
    spacing: tuple[float, float, float] | None = None
    axis_order: str = "kji"
    normalization: dict[str, Any] = field(default_factory=lambda: {"scheme": "zscore"})
    patch_size: tuple[int, int, int] = (128, 128, 128)
    sliding_window_step: float = 0.5
    sliding_window_blend: str = "gaussian"
    sliding_window_layout: str = "even"
    sliding_window_padding: str = "zeros"
    output: str = "softmax"
    license: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    head_trained: bool = True
    procedure: str | None = None
    local_corrections: bool = False
    first_mask_logit: float = 0.0
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.classes = {int(k): str(v) for k, v in self.classes.items()}
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.patch_size = tuple(int(p) for p in self.patch_size)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ModelCardError naming the first field that is wrong."""
        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id):
            raise ModelCardError(f"model id {self.id!r} must be letters, digits, '-', '_' or '.'")
        if self.kind not in KINDS:
            raise ModelCardError(f"kind {self.kind!r} is not one of {KINDS}")
        if self.axis_order not in AXIS_ORDERS:
            raise ModelCardError(f"axis_order {self.axis_order!r} is not one of {AXIS_ORDERS}")
        if self.output not in OUTPUT_ACTIVATIONS:
            raise ModelCardError(f"output {self.output!r} is not one of {OUTPUT_ACTIVATIONS}")
        scheme = self.normalization.get("scheme")
        if scheme not in NORMALIZATION_SCHEMES:
            raise ModelCardError(f"normalization scheme {scheme!r} is not one of {NORMALIZATION_SCHEMES}")
        if not isinstance(self.normalization.get("after_resampling", False), bool):
            raise ModelCardError("normalization after_resampling must be true or false, "
                                 f"got {self.normalization['after_resampling']!r}")
        step = self.sliding_window_step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
            raise ModelCardError(f"sliding_window_step must be a number in (0, 1], got {step!r}")
        for name, allowed in (("sliding_window_blend", WINDOW_BLENDS), ("sliding_window_layout", WINDOW_LAYOUTS),
                              ("sliding_window_padding", WINDOW_PADDINGS)):
            if getattr(self, name) not in allowed:
                raise ModelCardError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ModelCardError(f"spacing must be three positive numbers in mm, got {self.spacing}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ModelCardError(f"patch_size must be three positive integers, got {self.patch_size}")
        if 0 in self.classes:
            raise ModelCardError("classes must not list label 0 (background)")
        if not isinstance(self.head_trained, bool):
            raise ModelCardError(f"head_trained must be true or false, got {self.head_trained!r}")
        if self.procedure is not None and self.procedure not in PROCEDURES:
            raise ModelCardError(f"procedure {self.procedure!r} is not one of {PROCEDURES}")
        if isinstance(self.first_mask_logit, bool) or not isinstance(self.first_mask_logit, (int, float)) \
                or not -10.0 <= self.first_mask_logit <= 10.0:
            raise ModelCardError(f"first_mask_logit must be a number in [-10, 10], got {self.first_mask_logit!r}")
        if self.in_channels < 1:
            raise ModelCardError(f"in_channels must be at least 1, got {self.in_channels}")
        if self.format_version > CARD_FORMAT_VERSION:
            raise ModelCardError(
                f"model card format {self.format_version} is newer than this backend understands "
                f"({CARD_FORMAT_VERSION}); update tsfm-backend"
            )

    def require_trained_head(self) -> None:
        """Raise UntrainedHeadError when the output head was never trained (``head_trained`` false)."""
        if not self.head_trained:
            raise UntrainedHeadError(
                f"model {self.id!r} is a pretrained backbone with a new, untrained output head, so its labels "
                f"would be noise; fine-tune it first (tsfm-train run CONFIG with init: {{checkpoint: {self.id}}}) "
                "and segment with the fine-tuned model"
            )

    @property
    def num_classes(self) -> int:
        """Output channels of a softmax network (background included) or of a sigmoid one."""
        if self.output == "softmax":
            return max(self.classes, default=0) + 1
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = {str(k): v for k, v in sorted(self.classes.items())}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"model card has unknown fields {unknown}")
        missing = [name for name in ("id", "family", "architecture") if name not in data]
        if missing:
            raise ModelCardError(f"model card is missing {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelCardError(f"model card is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ModelCardError("model card must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except ModelCardError as error:
            raise ModelCardError(f"{path}: {error}") from error

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")
