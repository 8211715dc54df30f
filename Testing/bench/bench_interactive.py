"""Interactive segmentation benchmark: the bundled click model against two baselines, same cases, same clicks.

Protocol (deterministic): the first click at the voxel deepest inside the reference; every next click at
the deepest voxel of the largest error region (missed -> positive, extra -> negative). Dice after 1, 3 and
5 clicks and the seconds per click, per held-out case and mean. Baselines on the same cases and clicks:

- **sphere**: a ball at the first click with the reference's volume (an oracle size), fixed afterwards;
- **region growing**: SimpleITK ConfidenceConnected seeded at every positive click so far.

Run from the repository root: ``.venv/bin/python Testing/bench/bench_interactive.py [--model ID]
[--threads 2] [--json out/bench/interactive.json]``. Also times one network pass on the default region
and on a 128^3 model-grid region (float32 and the session's bf16), and whole clicks after the first on a
128^3 region (the model run with a 128^3 region of interest on the first case). Data: as ``tsfm_backend.shared_data`` finds it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tsfm_backend.checkpoints import LoadedModel, load_model
from tsfm_backend.device import amp_dtype
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.channels_last import prepare_channels_last
from tsfm_backend.inference.click_policy import PolicyClick, run_protocol
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.models.click_unet import PROMPT_CHANNELS
from tsfm_backend.shared_data import shared_data_dir

CHECKPOINTS = (1, 3, 5)


def sphere_segmenter(reference: np.ndarray, spacing: tuple[float, float, float]):
    """A ball of the reference's volume at the first click, unchanged by later clicks."""
    state: dict[str, np.ndarray] = {}
    radius = (3.0 * reference.sum() * float(np.prod(spacing)) / (4.0 * np.pi)) ** (1.0 / 3.0)

    def segment(click: PolicyClick) -> np.ndarray:
        if "mask" not in state:
            grid = np.indices(reference.shape, dtype=np.float32)
            distance = sum(((grid[a] - click.point[a]) * spacing[a]) ** 2 for a in range(3))
            state["mask"] = (distance <= radius ** 2).astype(np.uint8)
        return state["mask"]

    return segment


def region_growing_segmenter(image: sitk.Image):
    """ConfidenceConnected from all positive clicks so far (negative clicks cannot be used)."""
    seeds: list[tuple[int, int, int]] = []
    last = {"mask": np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)}

    def segment(click: PolicyClick) -> np.ndarray:
        if click.positive:
            k, j, i = click.point
            seeds.append((int(i), int(j), int(k)))
            grown = sitk.ConfidenceConnected(image, seedList=seeds, numberOfIterations=4, multiplier=2.5,
                                             initialNeighborhoodRadius=2, replaceValue=1)
            last["mask"] = sitk.GetArrayFromImage(grown).astype(np.uint8)
        return last["mask"]

    return segment


def model_segmenter(loaded, volume):
    session = InteractiveSession(loaded, volume)

    def segment(click: PolicyClick) -> np.ndarray:
        session.interact(Interaction("point", click.positive, point=click.point))
        return session.mask(1)

    return segment


def forward_seconds(network: torch.nn.Module, grid: tuple[int, int, int], repeats: int = 3,
                    amp: bool = False) -> float:
    """Best-of time of one network pass on a (1, 5, *grid) input: float32 as loaded, or as a session
    runs it (bf16 autocast on a channels-last copy) where the CPU computes bf16 natively."""
    dtype = amp_dtype(torch.device("cpu"), amp)
    x = torch.zeros(1, 1 + len(PROMPT_CHANNELS), *grid)
    if dtype is not None:
        network = prepare_channels_last(copy.deepcopy(network))
        x = x.contiguous(memory_format=torch.channels_last_3d)
    best = float("inf")
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        network(x)
        for _ in range(repeats):
            started = time.perf_counter()
            network(x)
            best = min(best, time.perf_counter() - started)
    return best


def region_128_click_seconds(loaded, volume, reference, clicks: int) -> list[float]:
    """Seconds of each protocol click after the first with a 128^3 model-grid region of interest."""
    wide = LoadedModel(loaded.network, replace(loaded.card, patch_size=(128, 128, 128)))
    trace = run_protocol(model_segmenter(wide, volume), reference, volume.spacing_kji, clicks)
    return [step.seconds for step in trace[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sts-click-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--json", default="out/bench/interactive.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    cases = loaded.card.provenance.get("data", {}).get("validation_cases")
    if not cases:
        raise SystemExit(f"model {args.model} lists no validation cases in its card")
    root = shared_data_dir() / "sts"
    results: dict[str, dict[str, dict]] = {"model": {}, "sphere": {}, "region_growing": {}}
    for name in cases:
        volume = read_volume(root / name / "ct.nii.gz")
        reference = read_volume(root / name / "mask.nii.gz").array > 0
        spacing = volume.spacing_kji
        image = sitk.ReadImage(str(root / name / "ct.nii.gz"), sitk.sitkFloat32)
        for method, segment in (
            ("model", model_segmenter(loaded, volume)),
            ("sphere", sphere_segmenter(reference, spacing)),
            ("region_growing", region_growing_segmenter(image)),
        ):
            trace = run_protocol(segment, reference, spacing, args.clicks)
            results[method][name] = {"dice": [s.dice for s in trace], "seconds": [s.seconds for s in trace]}

    print(f"Interactive benchmark: {args.model} on {len(cases)} held-out sarcoma CT cases, "
          f"{torch.get_num_threads()} CPU threads")
    checkpoints = [c for c in CHECKPOINTS if c <= args.clicks]
    columns = " ".join(f"{'D@' + str(c):>4}" for c in checkpoints) + " s/click"
    print(f"{'':<9}" + "".join(f" | {m:<{len(columns)}}" for m in results))
    header = f"{'case':<9}" + "".join(f" | {columns}" for _ in results)
    print(header)
    print("-" * len(header))
    means: dict[str, dict[str, float]] = {}
    for name in [*cases, "mean"]:
        row = f"{name:<9}"
        for method, per_case in results.items():
            if name == "mean":
                dice = {c: float(np.mean([v["dice"][c - 1] for v in per_case.values()])) for c in checkpoints}
                seconds = float(np.mean([np.mean(v["seconds"][1:]) for v in per_case.values()]))
                first = float(np.mean([v["seconds"][0] for v in per_case.values()]))
                means[method] = {**{f"dice_{c}": dice[c] for c in checkpoints},
                                 "seconds_per_click_after_first": seconds, "seconds_first_click": first}
            else:
                dice = {c: per_case[name]["dice"][c - 1] for c in checkpoints}
                seconds = float(np.mean(per_case[name]["seconds"][1:]))
            row += " | " + " ".join(f"{dice[c]:.2f}" for c in checkpoints) + f" {seconds:7.2f}"
        print(row)
    for baseline in ("sphere", "region_growing"):
        ratios = " ".join(f"D@{c} x{means['model'][f'dice_{c}'] / max(means[baseline][f'dice_{c}'], 1e-9):.2f}"
                          for c in checkpoints)
        print(f"model vs {baseline}: {ratios}")

    network = load_model(args.model).network  # as loaded: the sessions above prepared theirs in place
    default_grid = tuple(loaded.card.patch_size)
    timing: dict[str, dict] = {}
    for amp in (False, True):
        precision = "session precision" if amp else "float32"
        timing[f"default_region_{'amp' if amp else 'fp32'}"] = {
            "grid": default_grid, "precision": precision, "seconds": forward_seconds(network, default_grid, amp=amp)}
        timing[f"region_128_{'amp' if amp else 'fp32'}"] = {
            "grid": (128, 128, 128), "precision": precision,
            "seconds": forward_seconds(network, (128, 128, 128), 2, amp=amp)}
    for key, value in timing.items():
        print(f"network pass on a {value['grid']} model grid, {value['precision']} ({key}): {value['seconds']:.2f} s")
    first = cases[0]
    clicks_128 = region_128_click_seconds(loaded, read_volume(root / first / "ct.nii.gz"),
                                          read_volume(root / first / "mask.nii.gz").array > 0, args.clicks)
    timing["clicks_128"] = {"case": first, "seconds": clicks_128}
    print(f"clicks after the first with a 128^3 region on {first}: mean {np.mean(clicks_128):.2f} s, "
          f"max {max(clicks_128):.2f} s")
    print(f"session precision on this CPU: {amp_dtype(torch.device('cpu'), True) or torch.float32}")
    print("targets: mean Dice >= 0.80 after 1 click, >= 0.88 after 5; <= 1 s per click after the first "
          "on a 128^3 region")

    output = Path(args.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"model": args.model, "cases": cases, "threads": torch.get_num_threads(),
                                  "results": results, "means": means, "timing": timing}, indent=2))
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
