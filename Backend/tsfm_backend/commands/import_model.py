"""``tsfm-backend import FILE``: put any supported checkpoint into the model store."""

from __future__ import annotations

import argparse

HELP = "import a checkpoint (nnU-Net v1/v2, PyMIC, SuPreM, 3DSAM-adapter or our own) into the model store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="checkpoint file or model folder")
    parser.add_argument("--id", dest="model_id", help="model id in the store (default: from the file)")
    parser.add_argument("--license", help="license of the weights, recorded in the model card")
    parser.add_argument("--arch", action="append", default=[], metavar="KEY=JSON",
                        help="set an architecture argument the weights cannot tell, e.g. input_size=[64,128,128]")
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
        f"patch:         {' x '.join(str(p) for p in card.patch_size)} voxels (z, y, x)",
        f"normalization: {card.normalization['scheme']}",
        f"license:       {card.license}",
    ]


def run(args: argparse.Namespace) -> int:
    from tsfm_backend.checkpoints import import_model

    card, folder, fmt = import_model(args.file, args.model_id, license=args.license,
                                     architecture=parse_overrides(args.arch), overwrite=args.force)
    print(f"imported {card.id!r} into {folder}")
    for line in describe(card, fmt):
        print("  " + line)
    return 0
