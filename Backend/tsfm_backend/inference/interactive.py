"""Interactive segmentation: clicks and boxes in, the changed part of an object's mask out.

An ``InteractiveSession`` holds one image and any number of objects. Each object keeps its mask on the
image grid, its prompts and an undo/redo history. An interaction:

1. validates the prompt against the image (``PromptError`` for clicks outside, zero-size boxes, ...);
2. places a region of interest (ROI) around the object: ``card.patch_size`` voxels at the model spacing,
   centred on the first prompt, moved when a prompt falls outside it, grown when the predicted mask
   touches an inner border of the ROI (at most ``MAX_GROWTH`` times, each time covering the mask plus
   a margin); whatever the spacing it never holds more than ``MAX_ROI_VOXELS`` image voxels;
3. runs the click-conditioned network on the ROI resampled to the model grid (image, positive and
   negative click balls, box map, previous mask) and writes the thresholded result back into the ROI
   (an object's first mask at the card's ``first_mask_logit``, later ones at logit 0);
4. returns a ``MaskUpdate`` holding only the bounding box of the voxels that changed.

Models of family ``sam3d`` (3DSAM-adapter) take positive clicks only and run one of two procedures, the
card's ``procedure`` (or the session's ``procedure`` argument):

- ``published`` (the default): the authors' ``test.py`` exactly (``inference.sam3d_published``): the whole
  volume resampled to 1 mm and normalised once per session, a crop on the clicks' midpoint, zero padding,
  the probability pasted back and resized to the image grid; the mask may change anywhere in the image;
- ``cached``: a fixed cube of the card's patch at its spacing, centred on the clicks and kept while they
  stay well inside it, so its image embedding (``Sam3DPredictor``) serves further clicks; faster, but
  the cube is resampled on its own (clip before resampling, the image minimum outside), so masks differ
  slightly from the published ones.

Models of family ``sam_med3d`` (SAM-Med3D) run the authors' procedure (``inference.sam_med3d``): a 128^3
crop at 1.5 mm in RAS order around the object clicks, positive and negative clicks fed in order with the
previous low-resolution mask, the crop's image embedding cached; boxes are refused. Each click replaces
the object's mask inside the crop's footprint and clears what an earlier crop of the object left outside.

Models of family ``vista3d`` (VISTA3D) take positive and negative clicks, no boxes, and run the MONAI
bundle's click procedure (``inference.vista3d_clicks``): a window centred on each click of the object on
the whole image resampled once per session, the windows' logits summed, the components holding a positive
click kept; voxels no window covers keep the object's mask. Their cards are ``automatic`` (the same weights
segment their classes in jobs); ``serves_clicks`` says which models a session takes.

Coordinates are voxel indices (k, j, i) of the session image; arrays are (K, J, I).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.device import amp_dtype, resolve_device
from tsfm_backend.inference import roi as roi_geometry
from tsfm_backend.inference.channels_last import prepare_channels_last
from tsfm_backend.inference.corrections import correct_locally
from tsfm_backend.inference.roi import Roi
from tsfm_backend.modality import canonical_modality, resolve_normalization
from tsfm_backend.model_card import PROCEDURES, ModelCard
from tsfm_backend.models.click_unet import encode_prompts
from tsfm_backend.preprocessing import normalize
from tsfm_backend.volume import Volume

Voxel = tuple[int, int, int]

MAX_GROWTH = 2
KINDS = ("point", "box")
# Image voxels one click's region may hold. The region is cropped, resampled and written back at the
# image's own resolution, so a click's memory grows with it (about 16 bytes a voxel at the peak): on a
# 0.3 mm image the bundled models' field of view alone is 200 million voxels. 32 Mi voxels keep a
# click near half a GiB whatever the spacing; a finer image gets a smaller region, at the model's spacing.
MAX_ROI_VOXELS = 32 * 2**20


class PromptError(ValueError):
    """A prompt the session cannot use: outside the image, a zero-size box, an unknown object."""


@dataclass(frozen=True)
class Interaction:
    """One user prompt.

    ``kind`` is ``point`` (``point`` = (k, j, i)) or ``box`` (``box`` = inclusive corners
    ((k0, j0, i0), (k1, j1, i1))); a box with equal corners along one axis is a rectangle drawn on one
    slice (a 2D box). ``positive`` False makes a click remove instead of add.
    """

    kind: str
    positive: bool = True
    point: Voxel | None = None
    box: tuple[Voxel, Voxel] | None = None
    object_id: int = 1


@dataclass(frozen=True)
class MaskUpdate:
    """The new mask of ``object_id`` inside the box starting at ``origin`` (k, j, i).

    ``mask`` is a uint8 (dk, dj, di) crop; shape (0, 0, 0) means that nothing changed.
    """

    object_id: int
    origin: Voxel
    mask: np.ndarray

    @property
    def empty(self) -> bool:
        return self.mask.size == 0


@dataclass(frozen=True)
class _Prompts:
    positive: tuple[Voxel, ...] = ()
    negative: tuple[Voxel, ...] = ()
    boxes: tuple[tuple[Voxel, Voxel], ...] = ()
    clicks: tuple[tuple[Voxel, bool], ...] = ()  # every click in order, True for positive

    def points(self) -> list[Voxel]:
        return list(self.positive) + list(self.negative) + [c for box in self.boxes for c in box]


@dataclass
class _Step:
    """One undoable change: the mask inside a box before and after, and the prompts before and after."""

    origin: Voxel
    before: np.ndarray
    after: np.ndarray
    prompts_before: _Prompts
    prompts_after: _Prompts


@dataclass
class _Object:
    mask: np.ndarray
    prompts: _Prompts = field(default_factory=_Prompts)
    roi: Roi | None = None
    undo: list[_Step] = field(default_factory=list)
    redo: list[_Step] = field(default_factory=list)


class InteractiveSession:
    """Prompt-driven segmentation of several objects in one image with a promptable model.

    Args:
        loaded: a promptable model (``click_unet`` or ``sam3d`` family), or a ``vista3d`` one, and its card.
        volume: the image, voxels (K, J, I) in the units the card's normalisation expects (HU for CT).
        device: ``cpu``, ``cuda`` or ``auto``.
        amp: run the click network in bf16 (fp16 on GPUs without bf16) where the device computes it
            natively, channels-last (``prepare_channels_last``); about twice as fast as float32 on a
            bf16-capable CPU. False keeps float32 throughout.
        modality: ``CT``, ``MR`` or ``PET`` (DICOM's ``PT`` too) for a card that normalises by modality;
            None detects it from the image (``tsfm_backend.modality``). ``self.modality`` tells which.
        local_corrections: a click on an object that already has a mask changes it only by the
            changes of its sign (a positive click adds, a negative one removes) connected to the click
            (``inference.corrections``); None takes the card's ``local_corrections``.
        max_roi_voxels: the most image voxels a click's region holds (``MAX_ROI_VOXELS``); a larger
            region is shrunk evenly along its axes.
        procedure: for a ``sam3d`` model, ``published`` or ``cached`` (see the module docstring); None
            takes the card's ``procedure``, else ``published``.
    """

    def __init__(self, loaded: LoadedModel, volume: Volume, device: str = "cpu", amp: bool = True,
                 modality: str | None = None, local_corrections: bool | None = None,
                 max_roi_voxels: int = MAX_ROI_VOXELS, procedure: str | None = None,
                 max_undo_steps: int | None = None) -> None:
        if max_roi_voxels < 1:
            raise ValueError(f"max_roi_voxels must be at least 1, got {max_roi_voxels}")
        self.max_roi_voxels = int(max_roi_voxels)
        if max_undo_steps is not None and max_undo_steps < 0:
            raise ValueError(f"max_undo_steps must be at least 0, got {max_undo_steps}")
        self.max_undo_steps = max_undo_steps
        card = loaded.card
        if not serves_clicks(card):
            raise PromptError(f"model {card.id!r} is {card.kind}, not promptable; pick an interactive model")
        self.card = card
        self.volume = volume
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.network = loaded.network.to(self.device).eval()
        self.image_spacing = tuple(float(s) for s in volume.spacing_kji)
        self.model_spacing = tuple(card.spacing) if card.spacing is not None else self.image_spacing
        self.shape: Voxel = tuple(int(n) for n in volume.array.shape)  # type: ignore[assignment]
        self.fill_value = float(np.min(volume.array))
        self.normalization = resolve_normalization(card.normalization, volume.array, modality)
        self.modality: str | None = self.normalization.get("modality") or (
            canonical_modality(modality) if modality else None)
        self.objects: dict[int, _Object] = {}
        self._lock = threading.Lock()
        self._image_cache: tuple[Roi, torch.Tensor] | None = None
        self._sam3d = None
        self._sam_med3d = None
        self.procedure: str | None = None
        self._published = None
        self._vista3d = None
        if procedure is not None and procedure not in PROCEDURES:
            raise ValueError(f"procedure {procedure!r} is not one of {PROCEDURES}")
        if card.family == "sam3d":
            from tsfm_backend.inference.sam3d_predictor import Sam3DPredictor

            self._sam3d = Sam3DPredictor(self.network, self.device)
            self.procedure = procedure or card.procedure or "published"
            self.divisor: Voxel = (1, 1, 1)
        elif card.family == "sam_med3d":
            from tsfm_backend.inference.sam_med3d import SamMed3DInputError, SamMed3DPredictor

            try:
                self._sam_med3d = SamMed3DPredictor(self.network, volume, float(self.model_spacing[0]), self.device)
            except SamMed3DInputError as error:
                raise PromptError(str(error)) from error
            self.divisor = (1, 1, 1)
        else:
            self.divisor = tuple(getattr(self.network, "divisor", (1, 1, 1)))  # type: ignore[assignment]
        self.amp_dtype = amp_dtype(self.device, amp) if self._sam3d is None and self._sam_med3d is None else None
        if card.family == "vista3d":
            from tsfm_backend.inference.vista3d_clicks import Vista3DClicks

            # Its network also serves jobs, possibly at the same time: it is used as it is, never converted.
            self._vista3d = Vista3DClicks(self.network, volume, card, self.device, self.amp_dtype)
        elif self.amp_dtype is not None:
            self.network = prepare_channels_last(self.network)
        self.click_radius_mm = float(getattr(self.network, "click_radius_mm", 5.0))
        self.local_corrections = card.local_corrections if local_corrections is None else local_corrections

    # ----------------------------------------------------------------------------------- public API
    def check(self, interaction: Interaction) -> None:
        """Raise ``PromptError`` for a prompt ``interact`` would refuse; changes nothing."""
        self._check(interaction)

    def interact(self, interaction: Interaction) -> MaskUpdate:
        """Apply one prompt to its object (created on first use) and return the changed part of the mask.

        The session changes only once the prediction succeeded: a prompt that fails leaves no trace,
        not even an empty object.
        """
        self._check(interaction)
        with self._lock:
            state = self.objects.get(interaction.object_id)
            created = state is None
            if state is None:
                state = _Object(np.zeros(self.shape, dtype=np.uint8))
            prompts = _add_prompt(state.prompts, interaction)
            if self._sam3d is not None and self.procedure == "published":
                roi, region = self._predict_sam3d_published(state.mask, prompts)
            elif self._sam3d is not None:
                roi, region = self._predict_sam3d(state.roi, prompts)
            elif self._sam_med3d is not None:
                roi, region = self._predict_sam_med3d(state.roi, prompts)
            elif self._vista3d is not None:
                roi = Roi(start=(0, 0, 0), size=self.shape, grid=self.shape)
                region = self._vista3d.predict(state.mask, prompts.positive, prompts.negative)
            else:
                roi, region = self._predict_grown(state, prompts)
            if self.local_corrections and interaction.kind == "point" and state.mask.any():
                point = tuple(int(p) - s for p, s in zip(interaction.point, roi.start, strict=True))
                region = correct_locally(roi_geometry.crop(state.mask, roi, 0), region, point,
                                         interaction.positive, self.image_spacing, self.click_radius_mm)
            if created:
                self.objects[interaction.object_id] = state
            state.roi = roi
            return self._commit(interaction.object_id, state, roi, region, prompts)

    def undo(self, object_id: int) -> MaskUpdate:
        """Revert the object's last change; an empty update when there is nothing to undo."""
        with self._lock:
            state = self._object(object_id)
            if not state.undo:
                return _no_change(object_id)
            step = state.undo.pop()
            state.redo.append(step)
            return self._apply(object_id, state, step.origin, step.before, step.prompts_before)

    def redo(self, object_id: int) -> MaskUpdate:
        """Re-apply the last undone change; an empty update when there is nothing to redo."""
        with self._lock:
            state = self._object(object_id)
            if not state.redo:
                return _no_change(object_id)
            step = state.redo.pop()
            state.undo.append(step)
            return self._apply(object_id, state, step.origin, step.after, step.prompts_after)

    def reset(self, object_id: int | None = None) -> None:
        """Forget one object (mask, prompts, history), or every object when ``object_id`` is None."""
        with self._lock:
            if object_id is None:
                self.objects.clear()
            else:
                self._object(object_id)
                del self.objects[object_id]

    def set_mask(self, object_id: int, mask: np.ndarray) -> MaskUpdate:
        """Replace an object's mask (e.g. an edited segment); later clicks refine it. Undoable."""
        mask = np.asarray(mask)
        if tuple(mask.shape) != self.shape:
            raise PromptError(f"mask shape {tuple(mask.shape)} differs from the image shape {self.shape}")
        _check_object_id(object_id)
        with self._lock:
            state = self.objects.setdefault(object_id, _Object(np.zeros(self.shape, dtype=np.uint8)))
            whole = Roi(start=(0, 0, 0), size=self.shape, grid=self.shape)
            state.roi = roi_geometry.around_mask(mask > 0, self._base_roi_size(), self._fit) \
                if mask.any() else None
            return self._commit(object_id, state, whole, (mask > 0).astype(np.uint8), _Prompts())

    def mask(self, object_id: int) -> np.ndarray:
        """A copy of the object's (K, J, I) uint8 mask."""
        with self._lock:
            return self._object(object_id).mask.copy()

    # --------------------------------------------------------------------------------- validation
    def _check(self, interaction: Interaction) -> None:
        _check_object_id(interaction.object_id)
        if interaction.kind not in KINDS:
            raise PromptError(f"interaction kind {interaction.kind!r} is not one of {KINDS}")
        if interaction.kind == "point":
            if interaction.point is None:
                raise PromptError("a point interaction needs a point (k, j, i)")
            self._check_inside(interaction.point, "click")
            if self._sam3d is not None and not interaction.positive:
                raise PromptError(f"model {self.card.id!r} (3DSAM-adapter) takes positive clicks only")
            return
        if interaction.box is None or len(interaction.box) != 2:
            raise PromptError("a box interaction needs two corners ((k0, j0, i0), (k1, j1, i1))")
        if self._sam3d is not None:
            raise PromptError(f"model {self.card.id!r} (3DSAM-adapter) takes clicks only, not boxes")
        if self._sam_med3d is not None:
            raise PromptError(f"model {self.card.id!r} (SAM-Med3D) takes clicks only, not boxes")
        if self._vista3d is not None:
            raise PromptError(f"model {self.card.id!r} (VISTA3D) takes clicks only, not boxes")
        if not interaction.positive:
            raise PromptError("box prompts mark the object to add; draw a negative click to remove")
        low, high = interaction.box
        for corner in (low, high):
            self._check_inside(corner, "box corner")
        flat = [name for axis, name in enumerate("kji") if int(low[axis]) == int(high[axis])]
        if len(flat) > 1:
            raise PromptError(
                f"box has zero size along {' and '.join(flat)}; a box spans a 3D region or a rectangle "
                "on one slice (zero size along one axis only)")

    def _check_inside(self, point: Voxel, what: str) -> None:
        if len(point) != 3:
            raise PromptError(f"{what} {tuple(point)} must have three coordinates (k, j, i)")
        if any(not 0 <= int(p) < n for p, n in zip(point, self.shape, strict=True)):
            raise PromptError(
                f"{what} (k, j, i) = {tuple(int(p) for p in point)} is outside the image of shape "
                f"(K, J, I) = {self.shape}")

    def _object(self, object_id: int) -> _Object:
        if object_id not in self.objects:
            raise PromptError(f"unknown object {object_id}; objects in this session: {sorted(self.objects)}")
        return self.objects[object_id]

    # ---------------------------------------------------------------------------------- prediction
    def _base_roi_size(self) -> Voxel:
        """The ROI size in image voxels that covers ``card.patch_size`` model voxels (at most ``max_roi_voxels``)."""
        return within_voxels(tuple(max(1, round(p * m / s)) for p, m, s in zip(  # type: ignore[arg-type]
            self.card.patch_size, self.model_spacing, self.image_spacing, strict=True)), self.max_roi_voxels)

    def _fit(self, size: Voxel) -> tuple[Voxel, Voxel]:
        """(ROI size in image voxels, model grid) for a wanted ROI ``size``.

        The grid is rounded up to the network's divisor and the ROI follows the grid, so the network
        always sees its own spacing. Two bounds hold whatever the image spacing: the ROI holds at most
        ``max_roi_voxels`` image voxels, and the grid at most ``roi.MAX_SIZE_FACTOR`` patches per axis
        (one voxel of a very coarse image can span more model voxels than that). Where even the
        network's smallest grid spans more image voxels than the cap (a very fine image), the ROI is cut
        to the cap and the network sees it magnified.
        """
        size = within_voxels(size, self.max_roi_voxels)
        # A wanted size a hair above a multiple of the divisor (rounding) does not take the next multiple.
        grid = [max(d, int(math.ceil(n * s / m / d - 0.05)) * d) for n, s, m, d in zip(
            size, self.image_spacing, self.model_spacing, self.divisor, strict=True)]
        grid = [min(g, int(math.ceil(roi_geometry.MAX_SIZE_FACTOR * p / d)) * d)
                for g, p, d in zip(grid, self.card.patch_size, self.divisor, strict=True)]

        def follow(axis: int) -> int:
            return max(1, round(grid[axis] * self.model_spacing[axis] / self.image_spacing[axis]))

        fitted = [follow(axis) for axis in range(3)]
        # Rounding the grid up to the divisor can take the ROI back over the cap: take divisor steps off
        # the axis holding the most image voxels (at most grid / divisor steps per axis).
        while math.prod(fitted) > self.max_roi_voxels:
            shrinkable = [axis for axis in range(3) if grid[axis] > self.divisor[axis]]
            if not shrinkable:
                break
            axis = max(shrinkable, key=lambda a: fitted[a])
            grid[axis] -= self.divisor[axis]
            fitted[axis] = follow(axis)
        return within_voxels(tuple(fitted), self.max_roi_voxels), tuple(grid)  # type: ignore[return-value]

    def _predict_grown(self, state: _Object, prompts: _Prompts) -> tuple[Roi, np.ndarray]:
        """Predict in the object's ROI; grow the ROI while the mask touches an inner border of it."""
        roi = roi_geometry.place(state.roi, prompts.points(), self._base_roi_size(), self.shape, self._fit)
        region = self._predict_click_unet(roi, state.mask, prompts)
        for _ in range(MAX_GROWTH):
            if not roi_geometry.touches_inner_border(region, roi, self.shape):
                break
            grown = roi_geometry.grow(roi, region, prompts.points(), self._base_roi_size(), self.shape,
                                      self._fit)
            if grown == roi:
                break
            roi = grown
            region = self._predict_click_unet(roi, state.mask, prompts)
        return roi, region

    def _crop_tensor(self, array: np.ndarray, roi: Roi, fill: float) -> torch.Tensor:
        crop = roi_geometry.crop(array, roi, fill)
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).to(self.device)

    def _to_grid(self, roi: Roi, points: list[Voxel] | tuple[Voxel, ...]) -> torch.Tensor:
        if not points:
            return torch.zeros((0, 3), device=self.device)
        return torch.tensor([roi_geometry.image_to_grid(p, roi) for p in points], device=self.device)

    def _model_image(self, roi: Roi) -> torch.Tensor:
        """(1, *roi.grid) normalised image of the ROI on the model grid; the last one is cached, since
        successive clicks usually share their ROI."""
        if self._image_cache is not None and self._image_cache[0] == roi:
            return self._image_cache[1]
        image = normalize(self._crop_tensor(self.volume.array, roi, self.fill_value)[None], self.normalization)
        image = F.interpolate(image[None], size=roi.grid, mode="trilinear", align_corners=False)[0]
        self._image_cache = (roi, image)
        return image

    def _predict_click_unet(self, roi: Roi, mask: np.ndarray, prompts: _Prompts) -> np.ndarray:
        """(ROI size) uint8 prediction of the click-conditioned network for ``prompts``."""
        image = self._model_image(roi)
        previous = F.interpolate(self._crop_tensor(mask, roi, 0.0)[None, None], size=roi.grid,
                                 mode="trilinear", align_corners=False)[0, 0]
        boxes = None
        if prompts.boxes:
            boxes = torch.stack([torch.stack([self._to_grid(roi, [low])[0], self._to_grid(roi, [high])[0]])
                                 for low, high in prompts.boxes])
        channels = encode_prompts(
            roi.grid, self.model_spacing, self.click_radius_mm,
            positive=self._to_grid(roi, prompts.positive), negative=self._to_grid(roi, prompts.negative),
            boxes=boxes, previous=previous,
        )
        # One copy into the layout the network runs in, instead of a concatenation and a layout change.
        layout = torch.channels_last_3d if self.amp_dtype is not None else torch.contiguous_format
        inputs = torch.empty((1, len(image) + len(channels), *roi.grid), device=self.device, memory_format=layout)
        inputs[0, :len(image)] = image
        inputs[0, len(image):] = channels
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            logits = self.network(inputs).float()
            if self.card.output == "softmax":
                logits = logits[:, 1:2] - logits[:, :1]
            logits = F.interpolate(logits, size=roi.size, mode="trilinear", align_corners=False)
        threshold = self.card.first_mask_logit if not mask.any() else 0.0
        return (logits[0, 0] > threshold).to(torch.uint8).cpu().numpy()

    def _predict_sam3d(self, current: Roi | None, prompts: _Prompts) -> tuple[Roi, np.ndarray]:
        """3DSAM-adapter: one cube of ``patch_size`` at the card spacing centred on the positive clicks.

        The cube stays put while every click sits well inside it, so its cached image embedding serves
        the next clicks; otherwise it is re-centred on the clicks as published.
        """
        roi = current
        if roi is None or not all(roi_geometry.well_inside(p, roi) for p in prompts.positive):
            roi = roi_geometry.centred(prompts.positive, self._base_roi_size(),
                                       tuple(self.card.patch_size))  # type: ignore[arg-type]
        image = normalize(self._crop_tensor(self.volume.array, roi, self.fill_value)[None], self.normalization)
        image = F.interpolate(image[None], size=roi.grid, mode="trilinear", align_corners=False)
        outside = self._crop_tensor(np.ones(self.shape, dtype=np.float32), roi, 0.0)[None, None]
        outside = F.interpolate(outside, size=roi.grid, mode="nearest") < 0.5
        image = image.masked_fill(outside, 0.0).repeat(1, self.card.in_channels, 1, 1, 1)
        points = self._to_grid(roi, prompts.positive).round().long()
        points = torch.minimum(points.clamp(min=0), torch.tensor(roi.grid, device=points.device) - 1)
        probability = self._sam3d.predict(image, points, crop_key=roi.start)
        probability = F.interpolate(probability[None, None].float(), size=roi.size, mode="trilinear",
                                    align_corners=False)
        return roi, (probability[0, 0] > 0.5).to(torch.uint8).cpu().numpy()

    def _predict_sam_med3d(self, previous: Roi | None, prompts: _Prompts) -> tuple[Roi, np.ndarray]:
        """SAM-Med3D (``inference.sam_med3d``): the mask over the crop's footprint, widened to the object's
        previous region (cleared there), so the object is what the model's crop says."""
        from tsfm_backend.inference.sam_med3d import SamMed3DInputError

        try:
            origin, mask = self._sam_med3d.predict(prompts.clicks, self.max_roi_voxels)
        except SamMed3DInputError as error:
            raise PromptError(str(error)) from error
        roi = Roi(start=origin, size=mask.shape, grid=mask.shape)  # type: ignore[arg-type]
        if previous is None or mask.size == 0:
            return roi, mask
        low = [min(a, b) for a, b in zip(roi.start, previous.start, strict=True)]
        high = [max(a + n, b + m) for a, n, b, m in zip(roi.start, roi.size, previous.start, previous.size,
                                                       strict=True)]
        size = tuple(h - lo for lo, h in zip(low, high, strict=True))
        if math.prod(size) > self.max_roi_voxels:
            return roi, mask
        region = np.zeros(size, dtype=np.uint8)
        region[tuple(slice(s - lo, s - lo + n) for s, lo, n in zip(roi.start, low, roi.size, strict=True))] = mask
        return Roi(start=tuple(low), size=size, grid=size), region  # type: ignore[arg-type]

    def _predict_sam3d_published(self, previous: np.ndarray, prompts: _Prompts) -> tuple[Roi, np.ndarray]:
        """3DSAM-adapter as the authors evaluate it (``inference.sam3d_published``): the object becomes the
        published whole-image mask, computed only where the crop reaches the CT grid (its footprint).

        The returned region is the footprint, widened to the object's ``previous`` (K, J, I) voxels outside it
        (cleared there), so the object ends as the whole-image mask while no array of the image's size is
        made. The resampled, normalised volume is made on the first click and kept; the image embedding is
        reused while the crop stays the same (clicks with the same midpoint).
        """
        from tsfm_backend.inference import sam3d_published

        if self._published is None:
            self._published = sam3d_published.prepare(self.volume.array, self.image_spacing, self.normalization)

        def predict(crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            return self._sam3d.predict(crop, points, crop_key="published", outside_ok=True)

        footprint = sam3d_published.predict_footprint(self._published, list(prompts.positive), predict,
                                                      int(self.card.patch_size[0]), int(self.card.in_channels))
        update = sam3d_published.replacing(footprint, previous)
        size = tuple(int(n) for n in update.values.shape)
        return Roi(start=update.start, size=size, grid=size), update.values  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------- bookkeeping
    def _commit(self, object_id: int, state: _Object, roi: Roi, region: np.ndarray, prompts: _Prompts) -> MaskUpdate:
        """Write ``region`` (the ROI's new mask) into the object, record the undo step, return the update."""
        inner, outer = roi_geometry.overlap(roi, self.shape)
        new = region[inner]
        old = state.mask[outer]
        changed = new != old
        if not changed.any():
            state.prompts = prompts
            return _no_change(object_id)
        # The changed box from per-axis projections: a bool per voxel, where argwhere would take 24 bytes
        # per changed voxel.
        low, high = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
        for axis in range(3):
            hits = np.flatnonzero(changed.any(axis=tuple(a for a in range(3) if a != axis)))
            low[axis], high[axis] = hits[0], hits[-1] + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        origin = tuple(int(o.start) + int(a) for o, a in zip(outer, low, strict=True))
        target = tuple(slice(o, o + int(b - a)) for o, a, b in zip(origin, low, high, strict=True))
        step = _Step(origin, state.mask[target].copy(), new[box].astype(np.uint8), state.prompts, prompts)  # type: ignore[arg-type]
        state.undo.append(step)
        if self.max_undo_steps is not None:
            # Each step holds its changed box twice: the oldest go. Redo only ever holds undone steps.
            del state.undo[: max(0, len(state.undo) - self.max_undo_steps)]
        state.redo.clear()
        return self._apply(object_id, state, step.origin, step.after, prompts)

    def _apply(self, object_id: int, state: _Object, origin: Voxel, values: np.ndarray, prompts: _Prompts) -> MaskUpdate:
        target = tuple(slice(o, o + n) for o, n in zip(origin, values.shape, strict=True))
        state.mask[target] = values
        state.prompts = prompts
        return MaskUpdate(object_id, origin, values.copy())


def serves_clicks(card: ModelCard) -> bool:
    """Whether an interactive session can run ``card``'s model: promptable models, and VISTA3D, whose
    automatic weights also take clicks."""
    return card.kind == "promptable" or card.family == "vista3d"


def within_voxels(size: Voxel, cap: int) -> Voxel:
    """``size`` shrunk evenly along its axes (each at least 1) until it holds at most ``cap`` voxels."""
    total = math.prod(size)
    if total <= cap:
        return tuple(int(n) for n in size)  # type: ignore[return-value]
    factor = (cap / total) ** (1.0 / 3.0)
    scaled = [max(1, int(n * factor)) for n in size]
    # Axes held at 1 can leave the product over the cap: cut the longest axis to fit (three rounds at most).
    while math.prod(scaled) > cap:
        axis = scaled.index(max(scaled))
        scaled[axis] = max(1, scaled[axis] * cap // math.prod(scaled))
    return tuple(scaled)  # type: ignore[return-value]


def _check_object_id(object_id: int) -> None:
    if not isinstance(object_id, int | np.integer) or isinstance(object_id, bool) or object_id < 1:
        raise PromptError(f"object id must be a positive integer, got {object_id!r}")


def _add_prompt(prompts: _Prompts, interaction: Interaction) -> _Prompts:
    if interaction.kind == "point":
        point = tuple(int(p) for p in interaction.point)  # type: ignore[union-attr]
        clicks = prompts.clicks + ((point, bool(interaction.positive)),)
        if interaction.positive:
            return _Prompts(prompts.positive + (point,), prompts.negative, prompts.boxes, clicks)  # type: ignore[arg-type]
        return _Prompts(prompts.positive, prompts.negative + (point,), prompts.boxes, clicks)  # type: ignore[arg-type]
    low, high = (tuple(int(v) for v in corner) for corner in interaction.box)  # type: ignore[union-attr]
    ordered = (tuple(min(a, b) for a, b in zip(low, high, strict=True)),
               tuple(max(a, b) for a, b in zip(low, high, strict=True)))
    return _Prompts(prompts.positive, prompts.negative, prompts.boxes + (ordered,), prompts.clicks)  # type: ignore[arg-type]


def _no_change(object_id: int) -> MaskUpdate:
    return MaskUpdate(object_id, (0, 0, 0), np.zeros((0, 0, 0), dtype=np.uint8))
