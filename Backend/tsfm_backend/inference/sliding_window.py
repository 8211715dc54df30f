"""Sliding-window inference as pure functions, with a memory-bounded accumulator.

By default windows are laid out per axis as nnU-Net does (``even``: evenly spaced, first at 0, last
flush with the end, ``ceil((size - patch) / (patch * step)) + 1`` of them), weighted by a Gaussian
importance map with sigma = patch / 8, and their logits averaged (nnU-Net v2 and MONAI both average
logits, not probabilities). MONAI's ``sliding_window_inference`` is the ``fixed_stride`` layout (a
window every ``int(patch * step)`` voxels, the last one moved back flush with the end) with
``constant`` (uniform) or Gaussian weights; weights trained and evaluated with MONAI keep its choice
(the model card's ``sliding_window_*`` fields). Windows run in order of their first axis, so once the window front has passed a
row of that axis no later window touches it: those rows are averaged and handed to ``on_slab``
right away and their memory reused. The accumulator therefore holds classes x (patch depth plus
the span of one batch) x rows x columns, never classes x the whole volume.

The network is passed in as a callable, ``predict(batch (B, C, *patch)) -> logits (B, K, *patch)``;
``make_predictor`` builds one with mirroring test-time augmentation, autocast and channels-last.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tsfm_backend.model_card import WINDOW_BLENDS, WINDOW_LAYOUTS, WINDOW_PADDINGS

Slab = Callable[[int, torch.Tensor], None]

# Float32 elements of averaged logits handed to ``on_slab`` at once (64 MB).
SLAB_ELEMENTS = 16 * 2**20
Progress = Callable[[float, str], None]


# Windows tested against the body mask between two ``is_cancelled()`` polls while planning.
PLAN_CANCEL_EVERY = 4096
# A card's padding name -> torch.nn.functional.pad's mode.
TORCH_PAD_MODES = {"zeros": "constant", "replicate": "replicate"}


class InferenceCancelled(Exception):
    """Raised between window batches when the caller's ``is_cancelled()`` returned True."""


class TooManyWindows(ValueError):
    """A window layout larger than the caller's ``max_windows``; raised before any list is built."""


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {tuple(allowed)}")


def fixed_stride(patch: int, step: float) -> int:
    """The ``fixed_stride`` layout's distance between windows: ``int(patch * step)``, at least 1 (MONAI's)."""
    return max(1, int(patch * step))


def window_count(size: int, patch: int, step: float, layout: str = "even") -> int | float:
    """How many windows ``window_starts`` would lay along one axis, computed without building them.

    A step so small that the count passes 2**62 comes back as a float (``math.inf`` where it
    overflows, e.g. a step of 5e-324), so a caller can compare any request with its limit without
    allocating anything. The ``fixed_stride`` layout never lays more windows than the axis has voxels.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    _check_choice("window layout", layout, WINDOW_LAYOUTS)
    if patch >= size:
        return 1
    if layout == "fixed_stride":
        return math.ceil((size - patch) / fixed_stride(patch, step)) + 1
    # The same float expression as ``window_starts``, so both agree on the count exactly.
    stride_count = (size - patch) / (patch * step)
    if not math.isfinite(stride_count) or stride_count > 2**62:
        return stride_count + 1
    return math.ceil(stride_count) + 1


def total_windows(shape: Sequence[int], patch: Sequence[int], step: float, layout: str = "even") -> int | float:
    """Windows of ``window_positions`` over ``shape`` (each axis at least the patch); ``math.inf`` if unbounded."""
    total: int | float = 1
    for size, p in zip(shape, patch, strict=True):
        total *= window_count(size, p, step, layout)
    return total


def largest_stride(size: int, patch: int, step: float, layout: str = "even") -> int:
    """The largest distance in voxels between two consecutive window starts along one axis (0 for one window).

    Computed in O(1); the caller must have bounded ``window_count`` first.
    """
    count = window_count(size, patch, step, layout)
    if count == 1:
        return 0
    if layout == "fixed_stride":
        return fixed_stride(patch, step)
    return math.ceil((size - patch) / (count - 1))


def window_starts(size: int, patch: int, step: float, layout: str = "even") -> list[int]:
    """First voxel of each window along one axis of ``size`` voxels (``size >= patch``)."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    _check_choice("window layout", layout, WINDOW_LAYOUTS)
    if patch > size:
        raise ValueError(f"patch {patch} is larger than the axis ({size}); pad the image first")
    if layout == "fixed_stride":
        stride = fixed_stride(patch, step)
        return [min(i * stride, size - patch) for i in range(int(window_count(size, patch, step, layout)))]
    count = math.ceil((size - patch) / (patch * step)) + 1
    if count == 1:
        return [0]
    stride = (size - patch) / (count - 1)
    return [int(round(stride * i)) for i in range(count)]


def window_positions(
    shape: Sequence[int], patch: Sequence[int], step: float, max_windows: int | None = None, layout: str = "even"
) -> list[tuple[int, int, int]]:
    """All window corners (z, y, x), sorted by z first: the order the accumulator needs.

    Raises:
        TooManyWindows: more than ``max_windows`` windows (checked before the list is built).
    """
    if max_windows is not None:
        count = total_windows(shape, patch, step, layout)
        if count > max_windows:
            raise TooManyWindows(
                f"step {step:g} lays {format_count(count)} windows of {_dims(patch)} over {_dims(shape)} voxels; "
                f"at most {max_windows:,} are allowed")
    per_axis = [window_starts(n, p, step, layout) for n, p in zip(shape, patch, strict=True)]
    return list(itertools.product(*per_axis))


def gaussian_importance_map(
    patch: Sequence[int], sigma_scale: float = 1.0 / 8, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(Z, Y, X) float32 Gaussian centred on voxel ``patch // 2`` with sigma = patch * sigma_scale, max 1."""
    axes = []
    for size in patch:
        sigma = max(size * sigma_scale, 1e-6)
        distance = torch.arange(size, dtype=torch.float64) - size // 2
        axes.append(torch.exp(-0.5 * (distance / sigma) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = (weight / weight.max()).to(torch.float32)
    # Far corners can underflow to 0 in float32; give them the smallest positive weight (as nnU-Net does).
    weight[weight == 0] = weight[weight > 0].min()
    return weight.to(device)


def importance_map(patch: Sequence[int], blend: str = "gaussian", device: torch.device | str = "cpu") -> torch.Tensor:
    """(Z, Y, X) float32 weight of each voxel of a window: ``gaussian_importance_map`` or ``constant`` ones."""
    _check_choice("window blend", blend, WINDOW_BLENDS)
    if blend == "constant":
        return torch.ones(tuple(patch), dtype=torch.float32, device=device)
    return gaussian_importance_map(patch, device=device)


def pad_to_patch(
    image: torch.Tensor, patch: Sequence[int], padding: str = "zeros"
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad (C, Z, Y, X), split evenly on both sides (the smaller half before), so every axis is at least the patch.

    ``padding`` is ``zeros`` or ``replicate`` (edge voxels repeated, MONAI's ``padding_mode="replicate"``).
    Returns the padded image and the padding before each axis (to crop results back).
    """
    _check_choice("window padding", padding, WINDOW_PADDINGS)
    before, pads = [], []
    for size, p in zip(image.shape[1:], patch, strict=True):
        missing = max(0, p - size)
        before.append(missing // 2)
        pads.append((missing // 2, missing - missing // 2))
    if not any(missing for pair in pads for missing in pair):
        return image, (0, 0, 0)
    flat = [value for pair in reversed(pads) for value in pair]
    # Replicate padding of three axes needs a batch dimension.
    padded = torch.nn.functional.pad(image[None], flat, mode=TORCH_PAD_MODES[padding])[0]
    return padded, tuple(before)  # type: ignore[return-value]


def format_count(count: int | float) -> str:
    """``1,234,567`` for counts a person can read, ``8.8e+299`` beyond, ``more than 1e308`` for inf."""
    if not math.isfinite(count):
        return "more than 1e308"
    return f"{int(count):,}" if count < 1e15 else f"{count:.2g}"


def _dims(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def windows_in_body(
    positions: list[tuple[int, int, int]],
    patch: Sequence[int],
    body: torch.Tensor | np.ndarray | None,
    is_cancelled: Callable[[], bool] | None = None,
) -> list[tuple[int, int, int]]:
    """The windows that contain at least one body voxel (all of them when ``body`` is None).

    ``is_cancelled()`` is polled every ``PLAN_CANCEL_EVERY`` windows, so a cancel is honoured while a
    long layout is being planned, not only once the windows run.
    """
    if body is None:
        return positions
    mask = body.cpu().numpy() if isinstance(body, torch.Tensor) else np.asarray(body)
    # Summed-volume table: any voxel in a box is one O(1) lookup.
    table = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64)
    table[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    kept = []
    for number, (z, y, x) in enumerate(positions):
        if is_cancelled is not None and number % PLAN_CANCEL_EVERY == 0 and is_cancelled():
            raise InferenceCancelled(f"cancelled while planning windows ({number} of {len(positions)} tested)")
        z1, y1, x1 = z + patch[0], y + patch[1], x + patch[2]
        total = (
            table[z1, y1, x1]
            - table[z, y1, x1]
            - table[z1, y, x1]
            - table[z1, y1, x]
            + table[z, y, x1]
            + table[z, y1, x]
            + table[z1, y, x]
            - table[z, y, x]
        )
        if total > 0:
            kept.append((z, y, x))
    return kept


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (0, 1, 2 of a (Z, Y, X) patch) as tensor dims of a batch."""
    dims = [axis + 2 for axis in axes]
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


def make_predictor(
    network: torch.nn.Module,
    mirror_axes: Sequence[int] = (),
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``batch (B, C, Z, Y, X) -> float32 logits (B, K, Z, Y, X)``, averaged over mirrored copies.

    ``amp_dtype`` (bf16 or fp16) turns on autocast on the batch's device; ``channels_last`` feeds the
    network channels-last-3d tensors (faster convolutions on CUDA). A network that returns a list or
    tuple (deep supervision) contributes its first, full-resolution output.
    """
    combos = mirror_combinations(mirror_axes)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(
            batch.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            output = network(batch)
        if isinstance(output, (list, tuple)):
            output = output[0]
        return output.float()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        total = forward(batch)
        for dims in combos[1:]:
            total += torch.flip(forward(torch.flip(batch, dims)), dims)
        return total.div_(len(combos)) if len(combos) > 1 else total

    return predict


def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: Sequence[int],
    num_classes: int,
    on_slab: Slab,
    step: float = 0.5,
    batch_size: int = 1,
    body: torch.Tensor | np.ndarray | None = None,
    empty_logits: torch.Tensor | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    max_windows: int | None = None,
    blend: str = "gaussian",
    layout: str = "even",
) -> None:
    """Average weighted window logits over ``image`` and hand them out slab by slab.

    Args:
        predict: batch (B, C, *patch) -> logits (B, num_classes, *patch).
        image: (C, Z, Y, X), every axis at least the patch (see ``pad_to_patch``).
        patch: window size (Z, Y, X) in voxels.
        on_slab: called as ``on_slab(z0, logits)`` with the averaged logits (num_classes, rows, Y, X)
            of rows z0 .. z0 + rows - 1, in increasing z0, covering every row exactly once.
        body: optional (Z, Y, X) mask; windows with no body voxel are not run.
        empty_logits: (num_classes,) logits for voxels no window covered (default all zero).
        accumulate_dtype: dtype of the running sums. float16 halves their memory but loses precision
            where the Gaussian weights are tiny (window corners), so float32 is the default.
        progress: called after each batch with the fraction of windows done.
        is_cancelled: checked while the windows are planned and before each batch; True raises
            InferenceCancelled.
        max_windows: refuse (``TooManyWindows``) a layout of more windows, before building it: a tiny
            ``step`` would otherwise ask for millions of window corners.
        blend: ``gaussian`` or ``constant`` window weights (``importance_map``).
        layout: ``even`` or ``fixed_stride`` window starts (``window_starts``).
    """
    shape = tuple(image.shape[1:])
    device = image.device
    if is_cancelled is not None and is_cancelled():
        raise InferenceCancelled("cancelled before the windows were planned")
    importance = importance_map(patch, blend, device=device)
    positions = windows_in_body(window_positions(shape, patch, step, max_windows, layout), patch, body, is_cancelled)
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    capacity = patch[0] + max((b[-1][0] - b[0][0] for b in batches), default=0)
    capacity = min(capacity, shape[0])
    scores = torch.zeros((num_classes, capacity, *shape[1:]), dtype=accumulate_dtype, device=device)
    weights = torch.zeros((capacity, *shape[1:]), dtype=torch.float32, device=device)
    fill = (empty_logits if empty_logits is not None else torch.zeros(num_classes)).to(device, torch.float32)
    base = 0  # first row not yet handed out; rows base .. base + capacity - 1 live in the ring buffer
    step_rows = max(1, SLAB_ELEMENTS // (num_classes * shape[1] * shape[2]))

    def emit(stop: int) -> None:
        nonlocal base
        # Row z lives at buffer row z % capacity (a ring), so handing rows out never moves memory.
        written_stop = min(stop, base + capacity)
        for chunk in range(base, written_stop, step_rows):
            for z0, ring in ring_runs(chunk, min(written_stop, chunk + step_rows), capacity):
                on_slab(z0, _average(scores[:, ring], weights[ring], fill))
                scores[:, ring] = 0
                weights[ring] = 0
        # Rows past the buffer were skipped by every window (outside the body): they take ``fill``.
        for chunk in range(written_stop, stop, step_rows):
            rows = min(stop, chunk + step_rows) - chunk
            on_slab(chunk, fill[:, None, None, None].expand(-1, rows, *shape[1:]).clone())
        base = max(base, stop)

    for done, batch in enumerate(batches):
        if is_cancelled is not None and is_cancelled():
            raise InferenceCancelled(f"cancelled after {done} of {len(batches)} window batches")
        emit(batch[0][0])
        tiles = torch.stack(
            [image[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in batch]
        )
        logits = predict(tiles).to(accumulate_dtype)
        for (z, y, x), tile in zip(batch, logits, strict=True):
            region = (slice(y, y + patch[1]), slice(x, x + patch[2]))
            for z0, ring in ring_runs(z, z + patch[0], capacity):
                part = slice(z0 - z, z0 - z + ring.stop - ring.start)
                # In place: no classes x patch temporaries, which cost page faults at 100+ classes.
                scores[(slice(None), ring, *region)].addcmul_(tile[:, part], importance[part])
                weights[(ring, *region)] += importance[part]
        if progress is not None:
            progress((done + 1) / len(batches), f"window batch {done + 1} of {len(batches)}")
    emit(shape[0])


def ring_runs(start: int, stop: int, capacity: int) -> list[tuple[int, slice]]:
    """Rows start .. stop - 1 as (first row, ring-buffer slice) runs that do not wrap around."""
    runs = []
    z = start
    while z < stop:
        offset = z % capacity
        length = min(stop - z, capacity - offset)
        runs.append((z, slice(offset, offset + length)))
        z += length
    return runs


def _average(scores: torch.Tensor, weights: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Weighted mean logits (float32); voxels with no weight get ``fill``."""
    covered = weights > 0
    averaged = scores.float() / torch.where(covered, weights, torch.ones_like(weights))
    if not bool(covered.all()):
        averaged = torch.where(covered[None], averaged, fill[:, None, None, None])
    return averaged


def sliding_window_logits(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: Sequence[int],
    num_classes: int,
    **kwargs,
) -> torch.Tensor:
    """The whole averaged logit volume (num_classes, Z, Y, X); for small images and for tests."""
    slabs: list[torch.Tensor] = []
    sliding_window(predict, image, patch, num_classes, lambda _z0, slab: slabs.append(slab), **kwargs)
    return torch.cat(slabs, dim=1)
