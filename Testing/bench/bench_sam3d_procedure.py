"""3DSAM-adapter: the published click procedure against the cached-cube one, same weights, same click.

A benchmark, not a test. On a real CT with a tumour contour (default: the soft-tissue sarcoma
``sts/STS_001`` from ``tsfm_backend.shared_data``) it clicks the voxel deepest inside the contour with an
``InteractiveSession`` per procedure (``published``: the authors' ``test.py``; ``cached``: a cube at the
card spacing with its image embedding kept) and prints the Dice agreement of the two masks, each
one's Dice against the contour, and the seconds of the first and of a repeated click.

No released 3DSAM-adapter weights are stored here, so by default the network is the ``tiny`` preset with
seeded random weights: the agreement then measures how far the two procedures differ on the same
network, not how well either segments. Give ``--checkpoint`` (an authors' ``last.pth.tar`` /
``best.pth.tar``) and ``--dataset`` for the published weights; ``--preset vit_b`` runs the published size
with random weights (minutes per crop on a CPU).

    .venv/bin/python Testing/bench/bench_sam3d_procedure.py [--case sts/STS_001] [--threads 2]
    .venv/bin/python Testing/bench/bench_sam3d_procedure.py --checkpoint kits/best.pth.tar --dataset kits
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.models.sam3d import PRESETS, Sam3D, from_official_checkpoint, sam3d_card
from tsfm_backend.shared_data import shared_data_dir


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def network_and_card(args: argparse.Namespace) -> tuple[Sam3D, object, str]:
    if args.checkpoint:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        network, card = from_official_checkpoint(checkpoint, dataset=args.dataset)
        return network, card, f"weights {args.checkpoint} ({args.dataset})"
    torch.manual_seed(0)
    network = Sam3D(**PRESETS[args.preset])
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    card = sam3d_card(PRESETS[args.preset], args.dataset, f"sam3d-{args.preset}")
    return network.eval(), card, (f"RANDOM weights, preset {args.preset} (no released 3DSAM-adapter weights "
                                  "here): the agreement compares procedures, not segmentation quality")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="sts/STS_001", help="folder under shared/data with ct.nii.gz, mask.nii.gz")
    parser.add_argument("--checkpoint", help="an authors' 3DSAM-adapter checkpoint")
    parser.add_argument("--dataset", default="kits", help="kits, lits, pancreas or colon (normalisation)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = shared_data_dir() / args.case
    if not (case / "ct.nii.gz").is_file():
        print(f"skipped: no CT at {case / 'ct.nii.gz'} (set TSFM_SHARED_DATA)")
        return 0
    if args.checkpoint and not Path(args.checkpoint).is_file():
        print(f"skipped: no checkpoint at {args.checkpoint}")
        return 0
    volume = read_volume(case / "ct.nii.gz")
    contour = read_volume(case / "mask.nii.gz").array > 0
    inside = np.argwhere(contour)
    click = tuple(int(c) for c in np.round(inside.mean(0)))
    if not contour[click]:
        click = tuple(int(c) for c in inside[len(inside) // 2])
    network, card, weights = network_and_card(args)
    print(f"case {args.case}: shape (K, J, I) {volume.array.shape}, spacing {volume.spacing_kji} mm; click {click}")
    print(weights)
    masks, rows = {}, []
    for procedure in ("published", "cached"):
        session = InteractiveSession(LoadedModel(network, card), volume, device=args.device, procedure=procedure)
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            session.interact(Interaction("point", point=click))
            seconds.append(time.perf_counter() - start)
        masks[procedure] = session.mask(1) > 0
        rows.append((procedure, seconds[0], seconds[1], dice(masks[procedure], contour), int(masks[procedure].sum())))
    print(f"{'procedure':<10} {'1st click s':>11} {'2nd click s':>11} {'Dice vs contour':>15} {'voxels':>9}")
    for name, first, second, score, voxels in rows:
        print(f"{name:<10} {first:>11.2f} {second:>11.2f} {score:>15.3f} {voxels:>9}")
    print(f"Dice agreement published vs cached: {dice(masks['published'], masks['cached']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
