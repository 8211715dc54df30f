"""Benchmark: writing one interactive answer into a segment, in place vs through a whole label map.

Run: .venv/bin/python Testing/module/bench_crop_write.py [--segments 40] [--size 300 512 512] [--crop 64]

A CT-sized volume holds ``--segments`` automatic segments (slabs in shared layers, as an automatic
result imports them). A 64^3 answer is written into a new segment with the default Segment Editor
settings (overwrite all): ours through ``segments.apply_crop``; the peer route exports the segment to
a whole-volume array, pastes the crop and writes the whole array back
through ``SetBinaryLabelmapToSegment`` in replace mode (what a tool does that has no crop write;
``slicer.util.updateSegmentBinaryLabelmapFromArray`` does the same through a temporary node but
crashes in the headless wheel), with overwrite ignored, so the peer does strictly less work.
Prints seconds per click for both and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import mini_slicer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--size", type=int, nargs=3, default=(300, 512, 512), metavar=("K", "J", "I"))
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    mini_slicer.start()
    import slicer
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop, grid_image, labels_to_segmentation

    shape = tuple(args.size)
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros(shape, np.int16))
    labels = np.zeros(shape, np.uint8)
    step = max(1, shape[0] // (args.segments + 1))
    for value in range(1, args.segments + 1):
        labels[value * step:value * step + max(1, step - 2), shape[1] // 5:-shape[1] // 5, shape[2] // 5:-shape[2] // 5] = value
    node, _ = labels_to_segmentation(labels, {}, volume)
    ours_id, peer_id = add_empty_segment(node, "ours"), add_empty_segment(node, "peer")
    rng = np.random.default_rng(0)
    crop = (rng.random((args.crop,) * 3) > 0.5).astype(np.uint8)

    ours, peer = [], []
    for click in range(args.clicks):
        origin = (shape[0] // 3 + click * 3, shape[1] // 3, shape[2] // 3)
        start = time.perf_counter()
        apply_crop(node, ours_id, volume, origin, crop)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        whole = slicer.util.arrayFromSegmentBinaryLabelmap(node, peer_id, volume)
        k, j, i = origin
        whole[k:k + args.crop, j:j + args.crop, i:i + args.crop] = crop
        image = grid_image(node, volume, (0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1), whole)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        logic.SetBinaryLabelmapToSegment(image, node, peer_id, logic.MODE_REPLACE)
        peer.append(time.perf_counter() - start)
    print(f"volume {shape} (K, J, I), {args.segments} segments, {args.crop}^3 answer, {args.clicks} clicks")
    print(f"in place (ours, overwrite all): median {statistics.median(ours):.3f} s, first {ours[0]:.3f} s")
    print(f"whole label map (peer route):   median {statistics.median(peer):.3f} s, first {peer[0]:.3f} s")
    print(f"ratio peer/ours (median): {statistics.median(peer) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
    main()
