"""Benchmark: one click through the whole module path on the held-out sarcoma cases, bundled model.

Run: .venv/bin/python Testing/module/bench_module_click.py [--cases STS_005 ...]

Each case is loaded into a headless MRML scene, the module's Logic starts the local backend the way
Slicer does (``tsfm-backend serve`` on loopback, bundled ``sts-click-small``), clicks once (world RAS)
at the deepest voxel of the clinician's contour, and the segment's Dice against the contour is
printed, for the volume as stored and for the same volume under a rotating parent transform. The
click is the backend's own evaluation policy (voxel farthest from the contour's border, in mm), so
the peer figure, the in-process Dice after one click recorded in the model card, uses the same click:
any difference is what the module path (geometry, wire, crop writes) loses. The self-test's own
click (``selftest.deepest_voxel``) is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import mini_slicer  # noqa: E402
from support.mini_slicer import REPO, add_parent_transform, rotation  # noqa: E402
from tsfm_backend.shared_data import shared_data_dir  # noqa: E402

CARD = REPO / "Backend" / "tsfm_backend" / "resources" / "models" / "sts-click-small" / "model.json"


def main() -> None:
    card = json.loads(CARD.read_text())
    metrics = card["provenance"]["metrics"]["cases"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=sorted(metrics))
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "sts")
    args = parser.parse_args()
    mini_slicer.start()
    import slicer
    from tsfm_backend.inference.click_policy import first_click
    from TSFMSegmentationLib.selftest import one_click_dice

    from TSFMSegmentation import TSFMSegmentationLogic

    logic = TSFMSegmentationLogic()
    started = time.perf_counter()
    logic.startLocalBackend(device="cpu")
    print(f"local backend up in {time.perf_counter() - started:.1f} s: {logic.backendSummary()[0]}")
    rows = []
    try:
        for case in args.cases:
            volume = mini_slicer.load_volume(args.data / case / "ct.nii.gz", case)
            reference = slicer.util.arrayFromVolume(mini_slicer.load_volume(args.data / case / "mask.nii.gz")).copy()
            spacing_kji = tuple(reversed(volume.GetSpacing()))
            click = first_click(reference > 0, spacing_kji).point
            start = time.perf_counter()
            plain = one_click_dice(logic, volume, reference, "sts-click-small", click)
            seconds = time.perf_counter() - start
            eroded = one_click_dice(logic, volume, reference, "sts-click-small")
            add_parent_transform(volume, rotation("z", 30.0) @ rotation("x", -15.0))
            moved = one_click_dice(logic, volume, reference, "sts-click-small", click)
            peer = metrics.get(case, {}).get("dice", [float("nan")])[0]
            rows.append((case, plain, moved, peer, seconds, eroded))
            print(f"{case}: module Dice {plain:.4f}, under a transform {moved:.4f}, in-process (card) {peer:.4f}, "
                  f"self-test click {eroded:.4f}, session+click {seconds:.1f} s")
    finally:
        logic.stopBackend()
    print(f"mean: module {statistics.mean(r[1] for r in rows):.4f}, under a transform "
          f"{statistics.mean(r[2] for r in rows):.4f}, in-process (card) {np.nanmean([r[3] for r in rows]):.4f}, "
          f"self-test click {statistics.mean(r[5] for r in rows):.4f}")


if __name__ == "__main__":
    main()
