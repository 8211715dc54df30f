"""Automatic whole-volume segmentation: volume on its own grid in, label map on the same grid out.

``segment_volume`` chains the card's preprocessing, the memory-bounded sliding window and the exact
inverse. Averaged logits leave the sliding window slab by slab and are turned into labels at once:

* default: the logits are interpolated (trilinear, separable: first along the slab axis, then
  in-plane) onto the input grid and the argmax taken there, as nnU-Net v2 does, but a few rows
  at a time, so no classes x whole-volume array ever exists;
* ``fast``: the argmax is taken on the network grid and the label map resampled by nearest
  neighbour, cheaper still and the STU-Net authors' recommended mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tsfm_backend.device import amp_dtype
from tsfm_backend.inference.postprocessing import clean_labels
from tsfm_backend.inference.sliding_window import (
    InferenceCancelled,
    format_count,
    largest_stride,
    make_predictor,
    pad_to_patch,
    sliding_window,
    window_count,
)
from tsfm_backend.model_card import ModelCard
from tsfm_backend.preprocessing import (
    GridMap,
    labels_to_source,
    linear_source_weights,
    orientation,
    prepare,
    source_to_input,
)
from tsfm_backend.volume import Volume

log = logging.getLogger(__name__)

# Elements of float32 logits interpolated in-plane at once when resampling back (64 MB).
RESAMPLE_CHUNK_ELEMENTS = 16 * 2**20
UNCOVERED_LOGIT = -1.0e4
# Default limits of one segmentation (the server's settings and ``predict``'s flags start from these).
# A whole-body CT at step 0.5 needs a few hundred windows; step 0.1 on it a few thousand.
DEFAULT_MAX_WINDOWS = 10_000
# The estimated working memory of the largest catalog model (105 classes) on a whole-body CT is ~5 GiB.
DEFAULT_MAX_JOB_BYTES = 16 << 30
GIB = float(1 << 30)


@dataclass
class SegmentOptions:
    """How to run automatic segmentation.

    Attributes:
        step: window stride as a fraction of the patch (0.5 = 50 % overlap); None: the model card's
            ``sliding_window_step`` (0.5 unless the weights' authors used another).
        tta: average the 8 mirrored copies of every window (8x slower).
        batch_size: windows per forward pass.
        fast: argmax on the network grid, then nearest-neighbour back (less memory and time).
        amp: mixed precision: bf16 (else fp16) on CUDA, bf16 on CPUs with native bf16 instructions
            (about 1.7x faster convolutions there); float32 elsewhere or when False.
        largest_component: keep only the largest connected component of each class.
        fill_holes: fill cavities enclosed by a class.
        crop_to_body: run only on the bounding box of the body (voxels above -500 HU for CT).
        skip_outside_body: do not run windows that contain no body voxel; they become background.
    """

    step: float | None = None
    tta: bool = False
    batch_size: int = 1
    fast: bool = False
    amp: bool = True
    largest_component: bool = False
    fill_holes: bool = False
    crop_to_body: bool = False
    skip_outside_body: bool = True


class JobTooLarge(ValueError):
    """A segmentation whose planned windows or working memory exceed a limit; ``limit`` names it."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class LimitNames:
    """How a refusal names the step option and the two limits: server settings, or ``predict``'s flags."""

    step: str = "options.step"
    max_windows: str = "settings.max_windows"
    max_bytes: str = "settings.max_job_bytes"


@dataclass(frozen=True)
class SegmentPlan:
    """What a segmentation will ask for, computed from shapes alone (nothing allocated).

    Attributes:
        grid: the grid the windows slide over (resampled to the card spacing, padded to the patch),
            network-axis order; a float (``math.inf`` where it overflows) along an absurdly large axis.
        windows_per_axis: windows along each axis of ``grid``.
        windows: all windows (before those outside the body are skipped, so an upper bound).
        rows: rows of the running-sum ring buffer (of ``grid[1] x grid[2]`` voxels per class).
        working_bytes: estimated peak memory of the largest buffers, in bytes.
    """

    grid: tuple[int | float, int | float, int | float]
    windows_per_axis: tuple[int | float, int | float, int | float]
    windows: int | float
    rows: int | float
    working_bytes: int | float


def window_step(card: ModelCard, options: SegmentOptions) -> float:
    """The stride a segmentation uses: the options' own, else the card's ``sliding_window_step``."""
    return card.sliding_window_step if options.step is None else options.step


def plan_segmentation(card: ModelCard, volume: Volume, options: SegmentOptions) -> SegmentPlan:
    """The windows and memory ``segment_volume`` would need for ``volume``, before anything is allocated.

    Counted on the whole image (so an upper bound when ``crop_to_body`` or ``skip_outside_body``
    would run fewer windows), with the same formulas as ``preprocessing.prepare`` and
    ``sliding_window``: a step of 1e-300 or a huge resampling factor gives a huge count (``math.inf``
    where a float overflows), never an attempt to build the layout.
    """
    permutation, _ = orientation(volume, card.axis_order)
    shape = tuple(volume.shape[a] for a in permutation)
    spacing = tuple(volume.spacing_kji[a] for a in permutation)
    targets = card.spacing if card.spacing is not None else (None, None, None)
    resampled = [_resampled_size(n, s, t) for n, s, t in zip(shape, spacing, targets, strict=True)]
    grid = tuple(max(n, p) for n, p in zip(resampled, card.patch_size, strict=True))
    step = window_step(card, options)
    layout = card.sliding_window_layout
    per_axis = tuple(window_count(n, p, step, layout) if isinstance(n, int) else n / (p * step) + 1
                     for n, p in zip(grid, card.patch_size, strict=True))
    windows = math.prod(per_axis)
    rows = _ring_rows(grid, card.patch_size, per_axis, options.batch_size, step, layout)
    source_voxels = math.prod(volume.shape)
    voxels = math.prod(grid)
    # float32 copy of the image and its normalised copy; network-grid image (float32) and body (bool);
    # the body's summed-volume table (int64) and its cumsum temporaries; the label maps; the running
    # sums and weights (float32) of the ring buffer.
    working = 8 * source_voxels + 5 * voxels + 2 * (source_voxels + voxels)
    if options.skip_outside_body:
        working += 24 * voxels
    working += 4 * (card.num_classes + 1) * rows * grid[1] * grid[2]
    return SegmentPlan(grid=grid, windows_per_axis=per_axis, windows=windows, rows=rows,  # type: ignore[arg-type]
                       working_bytes=working)


def check_plan(
    plan: SegmentPlan,
    card: ModelCard,
    options: SegmentOptions,
    max_windows: int | None,
    max_bytes: int | None,
    names: LimitNames = LimitNames(),
) -> None:
    """Raise ``JobTooLarge`` naming the option and the limit when ``plan`` exceeds either limit (None: no limit)."""
    if max_windows is not None and plan.windows > max_windows:
        per_axis = " x ".join(format_count(n) for n in plan.windows_per_axis)
        raise JobTooLarge(
            f"{names.step} {window_step(card, options):g} asks for {format_count(plan.windows)} windows ({per_axis}) of "
            f"{_dims(card.patch_size)} voxels over the {_dims(plan.grid)} grid model {card.id!r} sees; at most "
            f"{max_windows:,} are allowed ({names.max_windows}): use a larger step or a smaller image",
            names.max_windows)
    if max_bytes is not None and plan.working_bytes > max_bytes:
        needed = (f"about {plan.working_bytes / GIB:,.1f} GiB" if math.isfinite(plan.working_bytes)
                  else "an unbounded amount")
        raise JobTooLarge(
            f"this job needs {needed} of working memory (a {_dims(plan.grid)} grid at the spacing of model "
            f"{card.id!r}, {card.num_classes} classes); at most {max_bytes / GIB:,.1f} GiB is allowed "
            f"({names.max_bytes}): use a smaller image, or check the image's spacing",
            names.max_bytes)


def _resampled_size(size: int, spacing: float, target: float | None) -> int | float:
    """``preprocessing.network_shape_for`` along one axis; a float past 2**62 (``math.inf`` on overflow)."""
    if target is None:
        return size
    value = size * spacing / target
    if not math.isfinite(value) or value > 2**62:
        return value
    return max(1, int(round(value)))


def _ring_rows(grid: Sequence[int | float], patch: Sequence[int], per_axis: Sequence[int | float],
               batch_size: int, step: float, layout: str) -> int | float:
    """Rows the sliding window's ring buffer holds: the patch depth plus the rows one batch spans."""
    if not all(isinstance(n, int) for n in (*grid, *per_axis)):
        return grid[0]
    depth = int(grid[0])
    stride = largest_stride(depth, patch[0], step, layout)
    plane = int(per_axis[1]) * int(per_axis[2])
    # A batch of B consecutive windows (z first) crosses at most ceil((B - 1) / plane) z starts.
    crossings = 0 if batch_size <= 1 else math.ceil((batch_size - 1) / plane)
    return min(depth, patch[0] + crossings * stride)


def _dims(shape: Sequence[int | float]) -> str:
    return " x ".join(format_count(n) for n in shape)


@dataclass
class Segmentation:
    """``labels`` (K, J, I) uint8 or uint16 on the input grid and the name of every label value."""

    labels: np.ndarray
    names: dict[int, str] = field(default_factory=dict)


def label_lookup(card: ModelCard) -> tuple[np.ndarray, np.dtype]:
    """Output channel -> label value (softmax: the channel itself; sigmoid: the sorted class ids) and its dtype."""
    if card.output == "softmax":
        values = np.arange(card.num_classes)
    else:
        values = np.asarray(sorted(card.classes), dtype=np.int64)
    dtype = np.dtype(np.uint8) if int(values.max(initial=0)) <= 255 else np.dtype(np.uint16)
    return values.astype(dtype), dtype


def logits_to_labels(logits: torch.Tensor, output: str, lookup: torch.Tensor) -> torch.Tensor:
    """(K, ...) logits -> label values (...): softmax argmax, or for sigmoid the strongest class above 0.5."""
    best, index = logits.max(dim=0)
    labels = lookup[index]
    if output == "sigmoid":
        labels = torch.where(best > 0, labels, torch.zeros_like(labels))
    return labels


class InputGridWriter:
    """Receives averaged logit slabs on the network grid and writes labels on the source grid.

    Source rows (axis 0) are emitted as soon as both network rows they interpolate from have arrived;
    only those rows are kept in between.
    """

    def __init__(self, grid: GridMap, output: str, lookup: torch.Tensor, dtype: np.dtype) -> None:
        self.grid = grid
        self.output = output
        self.lookup = lookup
        self.labels = np.zeros(grid.source_shape, dtype=dtype)
        self.lower, self.upper, self.weight = linear_source_weights(
            grid.source_shape[0], grid.network_shape[0]
        )
        self.next_row = 0
        self.tail: torch.Tensor | None = None
        self.tail_start = 0

    def add(self, z0: int, logits: torch.Tensor) -> None:
        """Network rows z0 .. z0 + n - 1 of averaged logits (classes, n, Y, X)."""
        self.tail = logits if self.tail is None else torch.cat([self.tail, logits], dim=1)
        available = z0 + logits.shape[1]
        stop = self.next_row
        while stop < len(self.upper) and self.upper[stop] < available:
            stop += 1
        classes, _, height, width = self.tail.shape
        rows_per_chunk = max(
            1, RESAMPLE_CHUNK_ELEMENTS // (classes * self.grid.source_shape[1] * self.grid.source_shape[2])
        )
        for start in range(self.next_row, stop, rows_per_chunk):
            end = min(stop, start + rows_per_chunk)
            self.labels[start:end] = self._rows(start, end)
        self.next_row = stop
        if stop < len(self.lower):
            drop = int(self.lower[stop]) - self.tail_start
            if drop > 0:
                self.tail = self.tail[:, drop:]
                self.tail_start += drop

    def _rows(self, start: int, end: int) -> np.ndarray:
        device = self.tail.device
        lower = torch.as_tensor(self.lower[start:end] - self.tail_start, device=device)
        upper = torch.as_tensor(self.upper[start:end] - self.tail_start, device=device)
        weight = torch.as_tensor(self.weight[start:end], device=device)[None, :, None, None]
        blended = torch.lerp(self.tail.index_select(1, lower), self.tail.index_select(1, upper), weight)
        in_plane = F.interpolate(
            blended.transpose(0, 1), size=self.grid.source_shape[1:], mode="bilinear", align_corners=False
        )
        return logits_to_labels(in_plane.transpose(0, 1), self.output, self.lookup).cpu().numpy()

    def result(self) -> np.ndarray:
        if self.next_row != self.grid.source_shape[0]:
            raise RuntimeError(f"only {self.next_row} of {self.grid.source_shape[0]} rows were produced")
        return self.labels


class NetworkGridWriter:
    """Receives averaged logit slabs and keeps their argmax on the network grid (``fast`` mode)."""

    def __init__(self, grid: GridMap, output: str, lookup: torch.Tensor, dtype: np.dtype) -> None:
        self.grid = grid
        self.output = output
        self.lookup = lookup
        self.labels = np.zeros(grid.network_shape, dtype=dtype)

    def add(self, z0: int, logits: torch.Tensor) -> None:
        self.labels[z0 : z0 + logits.shape[1]] = (
            logits_to_labels(logits, self.output, self.lookup).cpu().numpy()
        )

    def result(self) -> np.ndarray:
        return labels_to_source(self.labels, self.grid)


def segment_volume(
    loaded,
    volume: Volume,
    options: SegmentOptions | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    max_windows: int | None = None,
    max_bytes: int | None = None,
    limit_names: LimitNames = LimitNames(),
) -> Segmentation:
    """Segment ``volume`` with ``loaded`` (a LoadedModel: ``.network`` and ``.card``).

    Returns labels (K, J, I) on the input grid: same shape as ``volume.array``, so the volume's
    spacing, origin and direction describe them. ``progress(fraction, message)`` is called after
    each window batch; ``is_cancelled()`` is checked before preprocessing, while the windows are
    planned and before each window batch, and raises ``InferenceCancelled`` when it returns True.
    ``max_windows`` and ``max_bytes`` (None: unlimited) refuse a job with ``JobTooLarge`` before
    anything is allocated (see ``plan_segmentation``).
    """
    options = options or SegmentOptions()
    card: ModelCard = loaded.card
    if card.kind != "automatic":
        raise ValueError(f"model {card.id!r} is {card.kind}; automatic segmentation needs an automatic model")
    check_plan(plan_segmentation(card, volume, options), card, options, max_windows, max_bytes, limit_names)
    if is_cancelled is not None and is_cancelled():
        raise InferenceCancelled("cancelled before preprocessing")
    device = torch.device(device)
    network = loaded.network.to(device).eval()
    channels_last = device.type == "cuda"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
        # Every window has the same shape, so cuDNN's one-off algorithm search pays for itself.
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        log.info("Segmenting on the CPU; a CUDA GPU is much faster for large models.")
    lookup_np, dtype = label_lookup(card)
    lookup = torch.as_tensor(lookup_np.astype(np.int64), device=device)

    with torch.inference_mode():
        prepared = prepare(
            volume, card, device, crop_to_body=options.crop_to_body, with_body=options.skip_outside_body
        )
        grid = prepared.grid
        image, before = pad_to_patch(prepared.image, card.patch_size, card.sliding_window_padding)
        body = prepared.body
        if body is not None:
            body, _ = pad_to_patch(body[None].float(), card.patch_size)
            body = body[0] > 0
        del prepared
        writer_type = NetworkGridWriter if options.fast else InputGridWriter
        writer = writer_type(grid, card.output, lookup, dtype)
        empty = torch.full((card.num_classes,), UNCOVERED_LOGIT)
        if card.output == "softmax":
            empty[0] = 0.0

        def on_slab(z0: int, logits: torch.Tensor) -> None:
            # Drop the padding added to reach the patch size before the rows reach the writer.
            z_start, y0, x0 = before
            rows = range(z0, z0 + logits.shape[1])
            keep = [r - z0 for r in rows if z_start <= r < z_start + grid.network_shape[0]]
            if not keep:
                return
            slab = logits[
                :, keep[0] : keep[-1] + 1, y0 : y0 + grid.network_shape[1], x0 : x0 + grid.network_shape[2]
            ]
            writer.add(z0 + keep[0] - z_start, slab)

        predictor = make_predictor(
            network,
            mirror_axes=(0, 1, 2) if options.tta else (),
            amp_dtype=amp_dtype(device, options.amp),
            channels_last=channels_last,
        )
        sliding_window(
            predictor,
            image,
            card.patch_size,
            card.num_classes,
            on_slab,
            step=window_step(card, options),
            batch_size=options.batch_size,
            body=body,
            empty_logits=empty,
            progress=progress,
            is_cancelled=is_cancelled,
            max_windows=max_windows,
            blend=card.sliding_window_blend,
            layout=card.sliding_window_layout,
        )
        labels = source_to_input(writer.result(), grid)
    labels = clean_labels(labels, largest=options.largest_component, holes=options.fill_holes)
    names = {value: name for value, name in card.classes.items()}
    return Segmentation(labels=labels, names=names)
