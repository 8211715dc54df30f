"""``tsfm-backend import FILE``: put any supported checkpoint into the model store."""

from __future__ import annotations

import argparse

HELP = "import a checkpoint (nnU-Net v1/v2, PyMIC, SuPreM, 3DSAM-adapter or our own) into the model store"

# The published 3DSAM-adapter models (tsfm_backend.models.sam3d.DATASETS), named here so that building
# the command line does not import torch.
SAM3D_DATASETS = ("kits", "lits", "pancreas", "colon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="checkpoint file or model folder")
    parser.add_argument("--id", dest="model_id", help="model id in the store (default: from the file)")
    parser.add_argument("--license", help="license of the weights, recorded in the model card")
    parser.add_argument("--arch", action="append", default=[], metavar="KEY=JSON",
                        help="set an architecture argument the weights cannot tell, e.g. input_size=[64,128,128]")
    parser.add_argument("--dataset", choices=SAM3D_DATASETS,
                        help="3DSAM-adapter only: the dataset the model was trained on, which sets its "
                             "intensity normalisation (default: named by the file or folder name)")
    parser.add_argument("--force", action="store_true", help="replace an installed model with the same id")


def parse_overrides(items: list[str]) -> dict:
    """``["input_size=[64,128,128]"]`` -> ``{"input_size": [64, 128, 128]}`` (values are JSON, else text)."""
    import json

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arch {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def describe(card, fmt: str) -> list[str]:
    """The lines ``import`` and ``fetch`` print about what they found."""
    architecture = card.architecture
    preset = architecture.get("preset") or ", ".join(
        f"{k}={v}" for k, v in architecture.items() if k not in ("input_channels", "num_classes", "in_channels")
    )
    names = list(card.classes.values())
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    spacing = "input's own" if card.spacing is None else " x ".join(f"{s:g}" for s in card.spacing) + " mm (z, y, x)"
    return [
        f"format:        {fmt}",
        f"family:        {card.family}",
        f"preset:        {preset or '-'}",
        f"classes:       {shown or '-'}",
        f"spacing:       {spacing}",
        f"patch:         {' x '.join(str(p) for p in card.patch_size)} voxels (z, y, x), "
        f"sliding-window step {card.sliding_window_step:g}",
        f"normalization: {_normalization(card.normalization)}",
        f"license:       {card.license}",
        *([] if card.head_trained else ["head:          new and untrained: fine-tune before segmenting"]),
    ]


def _normalization(normalization: dict) -> str:
    """``hu_window [-1000, 1000] HU -> [-1, 1]``: the scheme, then the numbers it uses."""
    scheme = normalization["scheme"]
    parts = [scheme]
    if "lower" in normalization and "upper" in normalization:
        parts.append(f"[{normalization['lower']:g}, {normalization['upper']:g}] HU")
    if "output_range" in normalization:
        low, high = normalization["output_range"]
        parts.append(f"-> [{low:g}, {high:g}]")
    if "mean" in normalization and "std" in normalization:
        parts.append(f"mean {normalization['mean']:.8g}, std {normalization['std']:.8g}")
    if normalization.get("after_resampling"):
        parts.append("(after resampling)")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from tsfm_backend.checkpoints import import_model

    card, folder, fmt = import_model(args.file, args.model_id, license=args.license,
                                     architecture=parse_overrides(args.arch), dataset=args.dataset,
                                     overwrite=args.force)
    print(f"imported {card.id!r} into {folder}")
    for line in describe(card, fmt):
        print("  " + line)
    return 0
