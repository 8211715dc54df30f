"""Dice of converted prompts (lasso, scribble) against the prompt-native alternative, on held-out sarcoma CTs.

The engine takes clicks and boxes; ``inference.prompt_conversion`` turns a lasso into a rectangle plus
clicks inside and a scribble into clicks along it. On each held-out patient of the bundled model's
card (``universal-click-small``: STS_005, 015, 025, 033, 041, 050) with its clinician's contour:

- lasso: the contour's fill on the slice where the tumour is largest, converted, against the 2D box
  around the same fill (what the user would draw instead), and against the box plus one click;
- scribble: a stroke across the tumour on that slice (its row through the tumour's centre), converted,
  against the same number of clicks placed as a careful user would (deepest first, spread inside the
  tumour in 3D), and against one click at the deepest voxel.

Each prompt starts a fresh object. Dice on the CT's own grid. Prints one line per case and the means.

    OMP_NUM_THREADS=2 .venv/bin/python Testing/bench/bench_prompt_conversion.py [--cases STS_005 STS_015]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tsfm_backend.checkpoints import load_model
from tsfm_backend.inference import prompt_conversion as conversion
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.shared_data import shared_data_dir
from tsfm_backend.volume import Volume

MODEL = "universal-click-small"
CARD = Path(__file__).resolve().parents[2] / "Backend/tsfm_backend/resources/models" / MODEL / "model.json"


def held_out_cases() -> list[str]:
    return json.loads(CARD.read_text())["provenance"]["data"]["validation_cases"]


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return float(2 * np.logical_and(prediction, reference).sum() / total) if total else 1.0


def run(loaded, volume: Volume, prompt: conversion.ConvertedPrompt) -> np.ndarray:  # noqa: ANN001
    """The object's mask after one converted prompt in a fresh session (box first, then clicks)."""
    session = InteractiveSession(loaded, volume, device="cpu")
    if prompt.box is not None:
        session.interact(Interaction("box", True, box=prompt.box))
    for point in prompt.positive:
        session.interact(Interaction("point", True, point=point))
    return session.mask(1) > 0


def prompts_for(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, conversion.ConvertedPrompt]:
    """Every prompt compared on one tumour: the converted ones and their native alternatives."""
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    fill = mask[k:k + 1] > 0
    lasso = conversion.lasso_prompt(fill, (k, 0, 0), spacing, positive=True)
    centre_j = int(round(np.argwhere(fill[0]).mean(axis=0)[0]))
    stroke = np.zeros_like(fill)
    stroke[0, centre_j] = fill[0, centre_j]
    scribble = conversion.scribble_prompt(stroke, (k, 0, 0), spacing, positive=True)
    careful = conversion.clicks_inside(mask > 0, (0, 0, 0), spacing, max_clicks=len(scribble.positive))
    return {
        "lasso (box + clicks)": lasso,
        "2D box": conversion.ConvertedPrompt(box=lasso.box),
        "2D box + 1 click": conversion.ConvertedPrompt(box=lasso.box, positive=lasso.positive[:1]),
        "scribble (clicks)": scribble,
        "same number of clicks": conversion.ConvertedPrompt(positive=tuple(careful)),
        "1 click": conversion.ConvertedPrompt(positive=tuple(careful[:1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=held_out_cases())
    args = parser.parse_args()
    loaded = load_model(MODEL, device="cpu")
    root = shared_data_dir() / "sts"
    scores: dict[str, list[float]] = {}
    started = time.perf_counter()
    for case in args.cases:
        image = sitk.ReadImage(str(root / case / "ct.nii.gz"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / case / "mask.nii.gz"))) > 0
        volume = Volume(sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing())
        line = []
        for name, prompt in prompts_for(mask, volume.spacing_kji).items():
            score = dice(run(loaded, volume, prompt), mask)
            scores.setdefault(name, []).append(score)
            line.append(f"{name} {score:.3f} ({len(prompt.positive)} clicks)")
        print(f"{case}: " + "; ".join(line), flush=True)
    print(f"\nmean Dice over {len(args.cases)} held-out CTs ({MODEL}, {time.perf_counter() - started:.0f} s):")
    for name, values in scores.items():
        print(f"  {name:24s} {statistics.mean(values):.3f}")
    lasso, box = statistics.mean(scores["lasso (box + clicks)"]), statistics.mean(scores["2D box"])
    scribble, clicks = statistics.mean(scores["scribble (clicks)"]), statistics.mean(scores["same number of clicks"])
    print(f"ratios: lasso / 2D box {lasso / box:.3f}; scribble / same number of clicks {scribble / clicks:.3f}")


if __name__ == "__main__":
    main()
