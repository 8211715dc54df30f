"""Evaluation: Dice and normalised surface Dice (MONAI metrics) per class and case, written as CSV + summary.

Both metrics are computed on the reference's own grid with its voxel spacing in mm, so the surface
tolerance is a physical distance. Conventions for empty structures: a class absent from both prediction
and reference scores 1 (nothing to find, nothing claimed) and is marked ``empty`` in the CSV; absent
from one of them it scores 0. The summary averages per class over cases, and over classes.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

CSV_FIELDS = ("case", "label", "name", "dice", "nsd", "reference_voxels", "predicted_voxels", "empty")


def case_metrics(prediction: np.ndarray, reference: np.ndarray, classes: dict[int, str],
                 spacing: tuple[float, float, float], tolerance_mm: float = 2.0,
                 case_id: str = "") -> list[dict[str, Any]]:
    """One row per class: Dice and NSD at ``tolerance_mm`` of (K, J, I) label maps with ``spacing`` (K, J, I) mm."""
    import torch
    from monai.metrics import compute_dice, compute_surface_dice

    if prediction.shape != reference.shape:
        raise ValueError(f"case {case_id!r}: prediction shape {prediction.shape} != reference {reference.shape}")
    rows = []
    for label, name in sorted(classes.items()):
        pred, ref = prediction == label, reference == label
        n_pred, n_ref = int(pred.sum()), int(ref.sum())
        if n_pred == 0 and n_ref == 0:
            dice = nsd = 1.0
        elif n_pred == 0 or n_ref == 0:
            dice = nsd = 0.0
        else:
            y_pred = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
            y = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
            dice = float(compute_dice(y_pred, y, include_background=False)[0, 0])
            nsd = float(compute_surface_dice(y_pred, y, class_thresholds=[tolerance_mm], include_background=False,
                                             spacing=list(spacing))[0, 0])
        rows.append({"case": case_id, "label": label, "name": name, "dice": dice, "nsd": nsd,
                     "reference_voxels": n_ref, "predicted_voxels": n_pred, "empty": n_pred == 0 and n_ref == 0})
    return rows


def summarize(rows: Iterable[dict[str, Any]], tolerance_mm: float) -> dict[str, Any]:
    """Mean Dice / NSD per class over cases, and the mean of those over classes."""
    per_class: dict[str, dict[str, list[float]]] = {}
    cases = set()
    for row in rows:
        cases.add(row["case"])
        entry = per_class.setdefault(row["name"], {"dice": [], "nsd": []})
        entry["dice"].append(float(row["dice"]))
        entry["nsd"].append(float(row["nsd"]))
    classes = {name: {"dice": float(np.mean(v["dice"])), "nsd": float(np.mean(v["nsd"])), "cases": len(v["dice"])}
               for name, v in per_class.items()}

    def mean(key: str) -> float:
        return float(np.mean([c[key] for c in classes.values()])) if classes else math.nan

    return {"cases": len(cases), "tolerance_mm": tolerance_mm, "mean_dice": mean("dice"), "mean_nsd": mean("nsd"),
            "classes": classes}


def write_report(rows: list[dict[str, Any]], output: Path, tolerance_mm: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.csv`` (one row per case and class) and ``summary.json``; returns the summary."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in CSV_FIELDS})
    summary = {**summarize(rows, tolerance_mm), **(extra or {})}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _label_files(folder: Path) -> dict[str, Path]:
    from tsfm_backend.image_io import image_stem, is_image_file

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of label maps")
    return {image_stem(p): p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}


def evaluate_folders(predictions: Path, references: Path, output: Path, classes: dict[int, str] | None = None,
                     tolerance_mm: float = 2.0) -> dict[str, Any]:
    """Score every reference label map against the prediction of the same name; both on the same grid."""
    from tsfm_backend.grid_alignment import labels_on_image_grid
    from tsfm_backend.image_io import read_volume

    refs, preds = _label_files(references), _label_files(predictions)
    if not refs:
        raise ValueError(f"{references}: no label maps found")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise ValueError(f"{predictions}: no prediction for cases {missing[:10]}")
    rows: list[dict[str, Any]] = []
    for case_id, ref_path in refs.items():
        reference, prediction = read_volume(ref_path), read_volume(preds[case_id])
        predicted = labels_on_image_grid(prediction, reference, f"prediction {preds[case_id].name}")
        case_classes = classes or {int(v): f"label {int(v)}" for v in np.unique(reference.array) if v != 0}
        rows += case_metrics(predicted, np.asarray(reference.array), case_classes,
                             reference.spacing_kji, tolerance_mm, case_id)
    return write_report(rows, output, tolerance_mm)


def evaluate_model(loaded, cases, output: Path, tolerance_mm: float = 2.0, options=None,
                   device: str = "cpu") -> dict[str, Any]:
    """Segment each labelled case with the backend's sliding window and score it against its label file."""
    from tqdm.auto import tqdm
    from tsfm_backend.grid_alignment import labels_on_image_grid
    from tsfm_backend.image_io import read_volume
    from tsfm_backend.inference.segmenter import SegmentOptions, segment_volume

    options = options or SegmentOptions(amp=False)
    rows: list[dict[str, Any]] = []
    for case in tqdm(list(cases), desc="evaluate", unit="case"):
        volume = read_volume(case.images[0])
        reference = read_volume(case.label)
        labels = labels_on_image_grid(reference, volume, f"label {case.label}")
        segmentation = segment_volume(loaded, volume, options, device=device)
        rows += case_metrics(segmentation.labels, labels, loaded.card.classes,
                             reference.spacing_kji, tolerance_mm, case.case_id)
    return write_report(rows, output, tolerance_mm, {"model": loaded.card.id})
