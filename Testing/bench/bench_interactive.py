"""Interactive segmentation benchmark: click models against two baselines, per kind of object, same clicks.

Protocol (deterministic): the first click at the voxel deepest inside the reference; every next click at
the deepest voxel of the largest error region (missed -> positive, extra -> negative). Dice after 1, 3 and
5 clicks and the seconds per click, per held-out object, per group and overall (the mean of the groups).
Groups (``tsfm_training.data.heldout_objects``): the sarcoma of the held-out patients in CT, MR and PET,
and organ / bone / vessel classes never trained on (TotalSegmentator's example CTs). Baselines on the
same objects and clicks:

- **sphere**: a ball at the first click with the reference's volume (an oracle size), fixed afterwards;
- **region growing**: SimpleITK ConfidenceConnected seeded at every positive click so far.

Also counted: how many clicks after the first lowered Dice (by more than 0.005); with ``--box``,
Dice after a first prompt that is a 2D box drawn on the axial slice where the object is largest; with
``--local``, each model again with the other setting of local corrections than its card's (with them, a
click changes only what is connected to it: ``inference.corrections``).

Run from the repository root: ``.venv/bin/python Testing/bench/bench_interactive.py [--models ID ...]
[--threads 2] [--json out/bench/interactive.json]``. The first model's card names the held-out patients
and classes. Also times one network pass on the default region and on a 128^3 model-grid region
(float32 and the session's precision: bf16 where the CPU computes it natively), and whole clicks after
the first on a 128^3 region. Data: as ``tsfm_backend.shared_data`` finds it.
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
from tsfm_backend.image_io import to_sitk
from tsfm_backend.inference.channels_last import prepare_channels_last
from tsfm_backend.inference.click_policy import PolicyClick, dice, run_protocol
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.models.click_unet import PROMPT_CHANNELS
from tsfm_backend.shared_data import shared_data_dir
from tsfm_training.data.heldout_objects import HeldoutObject, heldout_objects

CHECKPOINTS = (1, 3, 5)
MODALITIES = ["ct", "mr_t1", "pet"]
# Held out of the class-agnostic model's training (its card's evaluation.organ_classes says the same).
ORGAN_CLASSES = ["spleen", "kidney_left", "pancreas", "aorta", "vertebrae_T12"]
WORSE_BY = 0.005


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


def model_segmenter(loaded, obj: HeldoutObject, local: bool | None = None):
    """The model's session as a segmenter; ``local`` None keeps the card's local_corrections."""
    session = InteractiveSession(loaded, obj.volume, modality=obj.modality, local_corrections=local)

    def segment(click: PolicyClick) -> np.ndarray:
        session.interact(Interaction("point", click.positive, point=click.point))
        return session.mask(1)

    return segment


def axial_box_dice(loaded, obj: HeldoutObject) -> float:
    """Dice after one prompt: the bounding rectangle of the object on its largest axial slice (a 2D box)."""
    areas = obj.reference.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    rows = np.argwhere(obj.reference[k])
    low, high = rows.min(0), rows.max(0)
    session = InteractiveSession(loaded, obj.volume, modality=obj.modality)
    session.interact(Interaction("box", True, box=((k, int(low[0]), int(low[1])), (k, int(high[0]), int(high[1])))))
    return dice(session.mask(1), obj.reference)


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


def region_128_click_seconds(loaded, obj: HeldoutObject, clicks: int) -> list[float]:
    """Seconds of each protocol click after the first with a 128^3 model-grid region of interest."""
    wide = LoadedModel(loaded.network, replace(loaded.card, patch_size=(128, 128, 128)))
    trace = run_protocol(model_segmenter(wide, obj), obj.reference, obj.volume.spacing_kji, clicks)
    return [step.seconds for step in trace[1:]]


def trained_groups(card) -> str:
    """Which benchmark groups the model's training data held objects of (never the held-out patients)."""
    config = card.provenance.get("config", {})
    data = config.get("data", {})
    modalities = data.get("modalities") or ["ct"]
    kinds = [{"ct": "sarcoma CT", "mr_t1": "sarcoma MR", "pet": "sarcoma PET"}[m] for m in modalities]
    heldout = (data.get("totalseg") or {}).get("heldout_classes")
    organs = f"; other organ classes (not {', '.join(heldout)})" if heldout else ""
    return f"other patients' {', '.join(kinds)}{organs}"


def score(segmenters: dict, objects: list[HeldoutObject], clicks: int) -> dict[str, dict[str, dict]]:
    """method -> object name -> {group, dice per click, seconds per click}."""
    results: dict[str, dict[str, dict]] = {method: {} for method in segmenters}
    for obj in objects:
        for method, make in segmenters.items():
            trace = run_protocol(make(obj), obj.reference, obj.volume.spacing_kji, clicks)
            results[method][obj.name] = {"group": obj.group, "dice": [s.dice for s in trace],
                                         "seconds": [s.seconds for s in trace]}
    return results


def summarise(per_object: dict[str, dict], checkpoints: list[int]) -> dict[str, dict[str, float]]:
    """Per group and ``overall`` (mean of the groups): Dice at each checkpoint and seconds per click."""
    groups: dict[str, list[dict]] = {}
    for value in per_object.values():
        groups.setdefault(value["group"], []).append(value)
    out = {}
    for group, values in groups.items():
        steps = [(v["dice"][i - 1], v["dice"][i]) for v in values for i in range(1, len(v["dice"]))]
        out[group] = {**{f"dice_{c}": float(np.mean([v["dice"][c - 1] for v in values])) for c in checkpoints},
                      "seconds_per_click_after_first": float(np.mean([np.mean(v["seconds"][1:] or [0.0])
                                                                      for v in values])),
                      "worse_clicks": sum(after < before - WORSE_BY for before, after in steps),
                      "clicks_after_first": len(steps), "objects": len(values)}
    keys = [f"dice_{c}" for c in checkpoints] + ["seconds_per_click_after_first"]
    out["overall"] = {**{k: float(np.mean([g[k] for g in out.values()])) for k in keys},
                      "worse_clicks": sum(g["worse_clicks"] for g in out.values()),
                      "clicks_after_first": sum(g["clicks_after_first"] for g in out.values()),
                      "objects": sum(g["objects"] for g in out.values())}
    return out


def print_table(summaries: dict[str, dict[str, dict]], checkpoints: list[int]) -> None:
    groups = list(next(iter(summaries.values())))
    width = max(len(g) for g in groups) + 2
    head = " ".join(f"{'D@' + str(c):>5}" for c in checkpoints) + "  s/click  worse"
    print(f"{'':<{width}}" + "".join(f" | {m:<{len(head)}}" for m in summaries))
    print(f"{'group':<{width}}" + "".join(f" | {head}" for _ in summaries))
    print("-" * (width + len(summaries) * (len(head) + 3)))
    for group in groups:
        row = f"{group:<{width}}"
        for summary in summaries.values():
            s = summary[group]
            row += " | " + " ".join(f"{s[f'dice_{c}']:5.2f}" for c in checkpoints)
            row += f"  {s['seconds_per_click_after_first']:7.2f}  {s['worse_clicks']:>2}/{s['clicks_after_first']:<2}"
        print(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["universal-click-small", "sts-click-small"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--organ-classes", nargs="*", default=None,
                        help="held-out TotalSegmentator classes (default: the first model's card, else "
                             f"{' '.join(ORGAN_CLASSES)})")
    parser.add_argument("--box", action="store_true", help="also score a first prompt that is a 2D box")
    parser.add_argument("--local", action="store_true",
                        help="also score each model with local corrections switched the other way than its card says")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--json", default="out/bench/interactive.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {name: load_model(name) for name in args.models}
    card = next(iter(models.values())).card
    patients = card.provenance.get("data", {}).get("validation_cases")
    if not patients:
        raise SystemExit(f"model {args.models[0]} lists no validation cases in its card")
    organ_classes = args.organ_classes if args.organ_classes is not None else (
        card.provenance.get("config", {}).get("evaluation", {}).get("organ_classes") or ORGAN_CLASSES)
    objects = heldout_objects(shared_data_dir(), patients, MODALITIES, organ_classes)
    images = {id(obj.volume): sitk.Cast(to_sitk(obj.volume), sitk.sitkFloat32) for obj in objects}
    segmenters = {name: (lambda obj, loaded=loaded: model_segmenter(loaded, obj)) for name, loaded in models.items()}
    if args.local:  # each model again with the other setting of local corrections than its card's
        segmenters.update({
            f"{name} {'global' if loaded.card.local_corrections else 'local'}":
                (lambda obj, loaded=loaded: model_segmenter(loaded, obj, local=not loaded.card.local_corrections))
            for name, loaded in models.items()})
    segmenters["sphere"] = lambda obj: sphere_segmenter(obj.reference, obj.volume.spacing_kji)
    segmenters["region_growing"] = lambda obj: region_growing_segmenter(images[id(obj.volume)])
    results = score(segmenters, objects, args.clicks)
    checkpoints = [c for c in CHECKPOINTS if c <= args.clicks]
    summaries = {method: summarise(per_object, checkpoints) for method, per_object in results.items()}

    print(f"Interactive benchmark: {len(objects)} held-out objects (patients {', '.join(patients)}; "
          f"unseen classes {', '.join(organ_classes)}), {torch.get_num_threads()} CPU threads")
    print_table(summaries, checkpoints)
    for name, loaded in models.items():
        print(f"{name} trained on: {trained_groups(loaded.card)}")
    for name in models:
        for baseline in ("sphere", "region_growing"):
            ratios = " ".join(f"D@{c} x{summaries[name]['overall'][f'dice_{c}'] / max(summaries[baseline]['overall'][f'dice_{c}'], 1e-9):.2f}"
                              for c in checkpoints)
            print(f"{name} vs {baseline} (overall): {ratios}")

    boxes: dict[str, dict[str, float]] = {}
    if args.box:
        for name, loaded in models.items():
            per_group: dict[str, list[float]] = {}
            for obj in objects:
                per_group.setdefault(obj.group, []).append(axial_box_dice(loaded, obj))
            boxes[name] = {group: float(np.mean(values)) for group, values in per_group.items()}
            print(f"{name}, one 2D box on the largest axial slice: "
                  + ", ".join(f"{group} {value:.2f}" for group, value in boxes[name].items()))

    timing: dict[str, dict] = {}
    if not args.no_timing:
        name, loaded = next(iter(models.items()))
        network = load_model(name).network  # as loaded: the sessions above prepared theirs in place
        default_grid = tuple(loaded.card.patch_size)
        for amp in (False, True):
            precision = "session precision" if amp else "float32"
            timing[f"default_region_{'amp' if amp else 'fp32'}"] = {
                "grid": default_grid, "precision": precision,
                "seconds": forward_seconds(network, default_grid, amp=amp)}
            timing[f"region_128_{'amp' if amp else 'fp32'}"] = {
                "grid": (128, 128, 128), "precision": precision,
                "seconds": forward_seconds(network, (128, 128, 128), 2, amp=amp)}
        for key, value in timing.items():
            print(f"{name}: network pass on a {value['grid']} model grid, {value['precision']} ({key}): "
                  f"{value['seconds']:.2f} s")
        first = objects[0]
        clicks_128 = region_128_click_seconds(loaded, first, args.clicks)
        timing["clicks_128"] = {"object": first.name, "seconds": clicks_128}
        print(f"{name}: clicks after the first with a 128^3 region on {first.name}: mean {np.mean(clicks_128):.2f} s, "
              f"max {max(clicks_128):.2f} s")
        print(f"session precision on this CPU: {amp_dtype(torch.device('cpu'), True) or torch.float32}")
    print("targets: unseen classes D@1 >= sphere and D@5 >= 0.75; sarcoma CT >= 0.69 / 0.86 at 1 / 5 clicks; "
          "<= 0.2 s per click on the default region and <= 1 s on a 128^3 region; no click lowers Dice")

    output = Path(args.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"models": args.models, "patients": patients, "organ_classes": organ_classes,
                                  "threads": torch.get_num_threads(), "results": results,
                                  "summaries": summaries, "box": boxes, "timing": timing}, indent=2))
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
