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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tsfm_backend.device import amp_dtype
from tsfm_backend.inference.postprocessing import clean_labels
from tsfm_backend.inference.sliding_window import make_predictor, pad_to_patch, sliding_window
from tsfm_backend.model_card import ModelCard
from tsfm_backend.preprocessing import (
    GridMap,
    labels_to_source,
    linear_source_weights,
    prepare,
    source_to_input,
)
from tsfm_backend.volume import Volume

log = logging.getLogger(__name__)

# Elements of float32 logits interpolated in-plane at once when resampling back (64 MB).
RESAMPLE_CHUNK_ELEMENTS = 16 * 2**20
UNCOVERED_LOGIT = -1.0e4


@dataclass
class SegmentOptions:
    """How to run automatic segmentation.

    Attributes:
        step: window stride as a fraction of the patch (0.5 = 50 % overlap).
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

    step: float = 0.5
    tta: bool = False
    batch_size: int = 1
    fast: bool = False
    amp: bool = True
    largest_component: bool = False
    fill_holes: bool = False
    crop_to_body: bool = False
    skip_outside_body: bool = True


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
) -> Segmentation:
    """Segment ``volume`` with ``loaded`` (a LoadedModel: ``.network`` and ``.card``).

    Returns labels (K, J, I) on the input grid: same shape as ``volume.array``, so the volume's
    spacing, origin and direction describe them. ``progress(fraction, message)`` is called after
    each window batch; ``is_cancelled()`` is checked before each one and raises
    ``InferenceCancelled`` when it returns True.
    """
    options = options or SegmentOptions()
    card: ModelCard = loaded.card
    if card.kind != "automatic":
        raise ValueError(f"model {card.id!r} is {card.kind}; automatic segmentation needs an automatic model")
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
        image, before = pad_to_patch(prepared.image, card.patch_size)
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
            step=options.step,
            batch_size=options.batch_size,
            body=body,
            empty_logits=empty,
            progress=progress,
            is_cancelled=is_cancelled,
        )
        labels = source_to_input(writer.result(), grid)
    labels = clean_labels(labels, largest=options.largest_component, holes=options.fill_holes)
    names = {value: name for value, name in card.classes.items()}
    return Segmentation(labels=labels, names=names)
