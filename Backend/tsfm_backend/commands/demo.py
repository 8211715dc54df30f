"""``tsfm-backend demo``: one click on a real CT tumour with the bundled interactive model.

Reads a held-out case of the soft-tissue sarcoma set (CT + the clinician's contour), places one click
where a user would (the voxel deepest inside the tumour), segments with the default model, and writes
the mask and a PNG of the three orthogonal slices through the click with the result outlined in red
and the reference in green. Prints the Dice against the reference. Where the case also holds the
patient's MR and PET, the same tumour is clicked once in each and their Dice printed too.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from tsfm_backend.cli import CommandError
from tsfm_backend.shared_data import shared_data_dir
from tsfm_backend.store import DEFAULT_INTERACTIVE_MODEL

HELP = "segment a real CT tumour from one click and write the mask and a picture"
DEFAULT_MODEL = DEFAULT_INTERACTIVE_MODEL
FALLBACK_CASE = "STS_005"
# The same patient's tumour in other modalities: (image, mask, modality).
OTHER_MODALITIES = (("mr_t1.nii.gz", "mr_t1_mask.nii.gz", "MR"), ("pet.nii.gz", "pet_mask.nii.gz", "PET"))
WINDOW_HU = (-160.0, 240.0)
PIXEL_MM = 0.75

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="out/demo", help="folder for the mask and the PNG (default: out/demo)")
    parser.add_argument("--data", help="shared data folder (default: $TSFM_SHARED_DATA, else shared/data beside "
                                       "the checkout or beside the checkout it was cloned from)")
    parser.add_argument("--case", help="sarcoma case, e.g. STS_005 (default: the model's first validation case)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"promptable model id or path (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch the outside (4-neighbourhood)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _panel(image: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]],
           row_mm: float, col_mm: float) -> np.ndarray:
    """RGB uint8 picture of a 2D slice at ``PIXEL_MM`` per pixel with the masks' outlines drawn on it."""
    from PIL import Image

    low, high = WINDOW_HU
    gray = (np.clip((image - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    size = (max(1, round(image.shape[1] * col_mm / PIXEL_MM)), max(1, round(image.shape[0] * row_mm / PIXEL_MM)))
    rgb = np.repeat(np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR))[..., None], 3, axis=2)
    for mask, colour in masks:
        scaled = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        rgb[_outline(scaled)] = colour
    return rgb


def render_overview(image: np.ndarray, spacing_kji: tuple[float, float, float], point: tuple[int, int, int],
                    mask: np.ndarray, reference: np.ndarray | None, path: Path, title: str) -> Path:
    """Write a PNG of the axial, coronal and sagittal slices through ``point`` (k, j, i).

    Arrays are (K, J, I); the result is outlined in red, the reference (if any) in green. Slices are
    shown at their physical aspect with k (superior for axial CT) upward.
    """
    from PIL import Image, ImageDraw

    k, j, i = point
    sk, sj, si = spacing_kji
    red, green = (255, 40, 40), (40, 220, 40)

    def layers(cut):
        drawn = [(cut(reference), green)] if reference is not None else []
        return drawn + [(cut(mask), red)]

    panels = [
        _panel(image[k], layers(lambda a: a[k] > 0), sj, si),
        _panel(np.flipud(image[:, j, :]), layers(lambda a: np.flipud(a[:, j, :]) > 0), sk, si),
        _panel(np.flipud(image[:, :, i]), layers(lambda a: np.flipud(a[:, :, i]) > 0), sk, sj),
    ]
    height = max(p.shape[0] for p in panels) + 24
    width = sum(p.shape[1] for p in panels) + 8 * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    x = 8
    for panel in panels:
        canvas.paste(Image.fromarray(panel), (x, 24))
        x += panel.shape[1] + 8
    ImageDraw.Draw(canvas).text((8, 6), title, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.device import resolve_device
    from tsfm_backend.grid_alignment import labels_on_image_grid
    from tsfm_backend.image_io import read_volume, write_volume
    from tsfm_backend.inference.click_policy import dice, first_click
    from tsfm_backend.inference.interactive import Interaction, InteractiveSession

    device = resolve_device(args.device)
    if device.type == "cpu":
        log.info("Running on the CPU (%d threads); a click takes about a second.", torch.get_num_threads())
    loaded = load_model(args.model, device=device)
    validation = loaded.card.provenance.get("data", {}).get("validation_cases") or [FALLBACK_CASE]
    case = args.case or validation[0]
    folder = (Path(args.data) if args.data else shared_data_dir()) / "sts" / case
    if not (folder / "ct.nii.gz").is_file():
        raise CommandError(f"demo data not found: {folder / 'ct.nii.gz'}; pass --data or set TSFM_SHARED_DATA "
                           "to the shared data folder (the one holding sts/)")
    volume = read_volume(folder / "ct.nii.gz")
    reference = labels_on_image_grid(read_volume(folder / "mask.nii.gz"), volume, "mask.nii.gz") > 0 \
        if (folder / "mask.nii.gz").is_file() else None
    if reference is not None and reference.any():
        point = first_click(reference, volume.spacing_kji).point
    else:
        point = tuple(n // 2 for n in volume.shape)
    k, j, i = point
    lps = volume.ijk_to_lps() @ np.array([i, j, k, 1.0])
    print(f"{case}: click at voxel (i, j, k) = ({i}, {j}, {k}), RAS = "
          f"({-lps[0]:.1f}, {-lps[1]:.1f}, {lps[2]:.1f}) mm"
          f"{' (held out from training)' if case in validation else ''}")

    session = InteractiveSession(loaded, volume, device=device, modality="CT")
    started = time.perf_counter()
    session.interact(Interaction("point", True, point=point))
    seconds = time.perf_counter() - started
    mask = session.mask(1)

    output = Path(args.output)
    mask_path = write_volume(volume.with_array(mask), output / f"{case}_mask.nii.gz")
    score = dice(mask, reference) if reference is not None else None
    title = f"{case}  {loaded.card.id}  one click  " + (f"Dice {score:.3f}" if score is not None else "")
    picture = render_overview(volume.array.astype(np.float32), volume.spacing_kji, point, mask, reference,
                              output / f"{case}_overview.png", title)
    print(f"mask: {mask_path}")
    print(f"picture: {picture} (red: model, green: reference)")
    print(f"time for the click: {seconds:.2f} s on {device}")
    if score is not None:
        print(f"Dice vs reference: {score:.3f}")
    for image_file, mask_file, modality in OTHER_MODALITIES:
        if (folder / image_file).is_file() and (folder / mask_file).is_file():
            other = read_volume(folder / image_file)
            truth = labels_on_image_grid(read_volume(folder / mask_file), other, mask_file) > 0
            session = InteractiveSession(loaded, other, device=device, modality=modality)
            started = time.perf_counter()
            session.interact(Interaction("point", True, point=first_click(truth, other.spacing_kji).point))
            print(f"{case} {modality}: one click, Dice {dice(session.mask(1), truth):.3f} "
                  f"({time.perf_counter() - started:.2f} s)")
    return 0
