"""Simulated user prompts for training click-conditioned networks.

Two situations are drawn, as in iterative interactive training (DeepEdit, nnInteractive):

- **first interaction**: no previous mask; one to three positive clicks inside the object (the first
  often at its deepest voxel, as the evaluation policy clicks), sometimes a box around it instead of
  or next to the clicks: a 3D box, or a rectangle drawn on one slice (``flat_box``);
- **correction**: a previous mask that is the reference damaged in a plausible way (grown, shrunk,
  shifted, cut by a plane, with a spurious blob), the initial positive click, and one to four
  correction clicks placed in error regions (missed -> positive, extra -> negative);
- **iterative** (drawn per sample with ``iterative_probability``): a first interaction whose further
  rounds are played by the network itself during training. ``error_click`` places each next click in
  the largest error region of the network's own prediction, which then becomes the previous mask, so
  the network learns to correct its own mistakes (a negative click must shrink what it over-segmented).

Everything is numpy on the (K, J, I) grid of the training crop, drawn from the ``rng`` passed in, so a
run is reproducible from its seed. Coordinates are voxel indices (k, j, i).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tsfm_backend.inference.click_policy import error_regions, interior_distance, largest_error_region


@dataclass
class SimulationConfig:
    """Probabilities and sizes of the simulation; the defaults are those of the bundled model."""

    correction_probability: float = 0.5
    box_probability: float = 0.15
    deepest_first_click_probability: float = 0.5
    max_first_clicks: int = 3
    max_correction_clicks: int = 4
    max_corruption_voxels: int = 3
    box_jitter_voxels: int = 2
    # Share of the boxes drawn as a rectangle on one slice (a 2D box), as users draw them in a slice view.
    flat_box_probability: float = 0.0
    iterative_probability: float = 0.0
    max_iterations: int = 3


@dataclass
class Prompts:
    """Prompts for one crop: (N, 3) int arrays of clicks, (M, 2, 3) boxes, and the previous mask."""

    positive: np.ndarray
    negative: np.ndarray
    boxes: np.ndarray
    previous: np.ndarray
    notes: list[str] = field(default_factory=list)


def random_interior_click(
    region: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator, deepest: bool
) -> tuple[int, int, int]:
    """A voxel of ``region``: its deepest voxel, or a random one at least 30% of the maximum depth inside."""
    distance = interior_distance(region, spacing)
    if deepest:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(distance)), region.shape))
    candidates = np.argwhere(distance >= 0.3 * distance.max())
    return tuple(int(v) for v in candidates[rng.integers(len(candidates))])


def jittered_box(target: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    """(2, 3) inclusive corners of the target's bounding box, each moved by up to ``jitter`` voxels."""
    coords = np.argwhere(target)
    low = coords.min(0) + rng.integers(-jitter, jitter + 1, size=3)
    high = coords.max(0) + rng.integers(-jitter, jitter + 1, size=3)
    limit = np.array(target.shape) - 1
    low = np.clip(low, 0, limit)
    high = np.clip(np.maximum(high, low), 0, limit)
    return np.stack([low, high])


def flat_box(target: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    """(2, 3) corners of a rectangle on one slice around the target's cross-section there (a 2D box).

    The slice is drawn along the axial axis (k) two times in three, else along j or i, among the slices
    whose cross-section has at least half the largest one's area (where a user would draw it); the
    corners along that axis are equal.
    """
    axis = 0 if rng.random() < 2 / 3 else int(rng.integers(1, 3))
    other = tuple(a for a in range(3) if a != axis)
    areas = target.sum(axis=other)
    candidates = np.flatnonzero(areas >= 0.5 * areas.max())
    index = int(candidates[rng.integers(len(candidates))])
    section = np.take(target, index, axis=axis)
    coords = np.argwhere(section)
    low2 = coords.min(0) + rng.integers(-jitter, jitter + 1, size=2)
    high2 = coords.max(0) + rng.integers(-jitter, jitter + 1, size=2)
    limit = np.array([target.shape[a] for a in other]) - 1
    low2 = np.clip(low2, 0, limit)
    high2 = np.clip(np.maximum(high2, low2), 0, limit)
    low, high = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    low[axis] = high[axis] = index
    low[list(other)], high[list(other)] = low2, high2
    return np.stack([low, high])


def corrupt_mask(target: np.ndarray, rng: np.random.Generator, max_voxels: int) -> tuple[np.ndarray, str]:
    """A plausible wrong mask near ``target``: grown, shrunk, shifted, cut, or with an extra blob."""
    kind = str(rng.choice(["grow", "shrink", "shift", "cut", "blob", "empty_part"]))
    amount = int(rng.integers(1, max_voxels + 1))
    ball = ndimage.generate_binary_structure(3, 1)
    if kind == "grow":
        mask = ndimage.binary_dilation(target, ball, iterations=amount)
    elif kind == "shrink":
        mask = ndimage.binary_erosion(target, ball, iterations=amount)
    elif kind == "shift":
        mask = np.roll(target, tuple(int(v) for v in rng.integers(-amount, amount + 1, size=3)), axis=(0, 1, 2))
    elif kind == "cut":
        coords = np.argwhere(target)
        centre = coords[rng.integers(len(coords))]
        normal = rng.normal(size=3)
        grid = np.indices(target.shape).reshape(3, -1).T - centre
        mask = target & (grid @ normal >= 0).reshape(target.shape)
    elif kind == "blob":
        boundary = np.argwhere(ndimage.binary_dilation(target, ball, iterations=2) & ~target)
        centre = boundary[rng.integers(len(boundary))] if len(boundary) else np.array(target.shape) // 2
        radius = 2 + amount
        grid = np.indices(target.shape).reshape(3, -1).T - centre
        blob = ((grid ** 2).sum(1) <= radius ** 2).reshape(target.shape)
        mask = target | blob
    else:
        mask = target.copy()
        labels, count = ndimage.label(ndimage.binary_erosion(target, ball, iterations=1))
        if count:
            mask[labels == int(rng.integers(1, count + 1))] = False
    return mask.astype(bool), kind


def correction_clicks(
    previous: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float],
    rng: np.random.Generator, count: int,
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Up to ``count`` clicks in distinct error regions, larger regions first (positive, negative).

    Missed and extra voxels are separate regions (``error_regions``, as the evaluation policy uses), so a
    click's sign always matches the region it sits in.
    """
    positive, negative = [], []
    for region in error_regions(previous, target)[:count]:
        point = random_interior_click(region.mask, spacing, rng, deepest=bool(rng.random() < 0.5))
        (positive if region.missed else negative).append(point)
    return positive, negative


def error_click(
    prediction: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
) -> tuple[tuple[int, int, int], bool] | None:
    """A click in the largest error region of ``prediction`` (the evaluation policy, randomised).

    Returns ((k, j, i), positive): positive where the region was missed, negative where it is extra;
    the voxel is the region's deepest one half of the time, else a random voxel well inside it.
    None when the prediction equals the target.
    """
    found = largest_error_region(prediction, target)
    if found is None:
        return None
    region, missed = found
    return random_interior_click(region, spacing, rng, deepest=bool(rng.random() < 0.5)), missed


def simulation_rounds(rng: np.random.Generator, config: SimulationConfig) -> int:
    """How many rounds the network plays itself before the trained one: 0, or 1 to ``max_iterations``."""
    # Without self-play no number is drawn, so such configs see the same samples as before it existed.
    if config.iterative_probability <= 0 or config.max_iterations < 1:
        return 0
    if rng.random() >= config.iterative_probability:
        return 0
    return int(rng.integers(1, config.max_iterations + 1))


def simulate_prompts(
    target: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
    config: SimulationConfig | None = None,
) -> Prompts:
    """Prompts for a crop whose reference ``target`` (K, J, I bool) is not empty."""
    config = config or SimulationConfig()
    target = target.astype(bool)
    if not target.any():
        raise ValueError("click simulation needs a crop that contains the object")
    first = random_interior_click(
        target, spacing, rng, deepest=bool(rng.random() < config.deepest_first_click_probability))
    positive: list[tuple[int, int, int]] = [first]
    negative: list[tuple[int, int, int]] = []
    boxes: list[np.ndarray] = []
    notes: list[str] = []
    if rng.random() < config.correction_probability:
        previous, kind = corrupt_mask(target, rng, config.max_corruption_voxels)
        notes.append(f"correction:{kind}")
        count = int(rng.integers(1, config.max_correction_clicks + 1))
        more_positive, more_negative = correction_clicks(previous, target, spacing, rng, count)
        positive += more_positive
        negative += more_negative
    else:
        previous = np.zeros_like(target)
        notes.append("first")
        for _ in range(int(rng.integers(0, config.max_first_clicks))):
            positive.append(random_interior_click(target, spacing, rng, deepest=False))
        if rng.random() < config.box_probability:
            flat = config.flat_box_probability > 0 and rng.random() < config.flat_box_probability
            boxes.append((flat_box if flat else jittered_box)(target, rng, config.box_jitter_voxels))
            if rng.random() < 0.5:
                positive = []
            notes.append("box")
    return Prompts(
        positive=np.array(positive, dtype=np.int64).reshape(-1, 3),
        negative=np.array(negative, dtype=np.int64).reshape(-1, 3),
        boxes=np.array(boxes, dtype=np.int64).reshape(-1, 2, 3),
        previous=previous.astype(np.uint8),
        notes=notes,
    )
