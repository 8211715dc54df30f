"""``tsfm-backend segment``: segment one object of a CT from clicks and boxes with a promptable model.

Coordinates are given as X,Y,Z in ``--coords ras`` (Slicer's world coordinates, the default), ``lps``
(DICOM/ITK world coordinates) or ``ijk`` (voxel indices i, j, k as in Slicer's data probe). World
points are mapped to voxels with the image's full direction matrix, so oblique and flipped images work.
A value that starts with a minus sign needs the ``=`` form: ``--point=-12.5,30,4``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import numpy as np

from tsfm_backend.cli import CommandError
from tsfm_backend.store import DEFAULT_INTERACTIVE_MODEL

HELP = "segment one object from clicks and boxes (interactive model, no GUI)"
DEFAULT_MODEL = DEFAULT_INTERACTIVE_MODEL
COORDS = ("ras", "lps", "ijk")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="CT image file (NIfTI, NRRD, ...) or DICOM folder")
    parser.add_argument("-o", "--output", required=True, help="output mask file (e.g. mask.nii.gz)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y,Z",
                        help="positive click inside the object (repeatable; --point=-1,2,3 for a leading minus)")
    parser.add_argument("--negative", action="append", default=[], metavar="X,Y,Z",
                        help="negative click on something that is not the object (repeatable)")
    parser.add_argument("--box", action="append", default=[], metavar="X1,Y1,Z1,X2,Y2,Z2",
                        help="box around the object, two opposite corners (repeatable)")
    parser.add_argument("--coords", choices=COORDS, default="ras",
                        help="coordinate system of --point/--negative/--box (default: ras)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"promptable model id or path (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def parse_numbers(text: str, count: int, option: str) -> tuple[float, ...]:
    """``"1.5,-2,3"`` -> (1.5, -2.0, 3.0); CommandError naming the option when it is not ``count`` numbers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise CommandError(f"{option} {text!r} must be {count} comma-separated numbers")
    return values


def to_voxel_index(xyz: Sequence[float], coords: str, ijk_to_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel index (i, j, k) of a point given in ``coords`` (``ras``, ``lps`` or ``ijk``)."""
    point = np.asarray(xyz, dtype=float)
    if coords == "ijk":
        return point
    lps = point * np.array([-1.0, -1.0, 1.0]) if coords == "ras" else point
    return np.linalg.solve(ijk_to_lps[:3, :3], lps - ijk_to_lps[:3, 3])


def to_voxel(xyz: Sequence[float], coords: str, ijk_to_lps: np.ndarray, shape_kji: Sequence[int],
             what: str) -> tuple[int, int, int]:
    """The (k, j, i) voxel containing a point; CommandError when it lies outside the image."""
    i, j, k = (int(np.floor(v + 0.5)) for v in to_voxel_index(xyz, coords, ijk_to_lps))
    size_k, size_j, size_i = shape_kji
    if not (0 <= i < size_i and 0 <= j < size_j and 0 <= k < size_k):
        shown = ",".join(f"{v:g}" for v in xyz)
        raise CommandError(
            f"{what} {shown} ({coords}) is outside the image: it falls on voxel (i, j, k) = ({i}, {j}, {k}) "
            f"but the image has {size_i} x {size_j} x {size_k} voxels")
    return (k, j, i)


def run(args: argparse.Namespace) -> int:
    import torch

    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.device import resolve_device
    from tsfm_backend.image_io import read_volume, write_volume
    from tsfm_backend.inference.interactive import Interaction, InteractiveSession

    if not (args.point or args.box):
        raise CommandError("give at least one --point or --box inside the object")
    volume = read_volume(args.input)
    matrix = volume.ijk_to_lps()
    interactions: list[Interaction] = []
    for text in args.box:
        values = parse_numbers(text, 6, "--box")
        low = to_voxel(values[:3], args.coords, matrix, volume.shape, "--box corner")
        high = to_voxel(values[3:], args.coords, matrix, volume.shape, "--box corner")
        interactions.append(Interaction("box", True, box=(low, high)))
    for option, texts, positive in (("--point", args.point, True), ("--negative", args.negative, False)):
        for text in texts:
            point = to_voxel(parse_numbers(text, 3, option), args.coords, matrix, volume.shape, option)
            interactions.append(Interaction("point", positive, point=point))

    device = resolve_device(args.device)
    if device.type == "cpu":
        log.info("Running on the CPU (%d threads); each prompt takes about a second.", torch.get_num_threads())
    loaded = load_model(args.model, device=device)
    session = InteractiveSession(loaded, volume, device=device)
    started = time.perf_counter()
    for interaction in interactions:
        session.interact(interaction)
    mask = session.mask(1)
    seconds = time.perf_counter() - started
    write_volume(volume.with_array(mask), args.output)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    print(f"{args.output}: {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.1f} ml) from "
          f"{len(interactions)} prompt(s) in {seconds:.1f} s with {loaded.card.id} on {device}")
    return 0
