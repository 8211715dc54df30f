"""``tsfm-train`` command line: run a recipe config, evaluate predictions, export a trained model.

``tsfm-train run CONFIG.yaml [--set loop.steps=100 ...]`` loads the config (a path or the name of a
bundled one), applies the overrides and calls ``tsfm_training.recipes.<recipe>.run(config)``. Torch is
imported only inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from tsfm_training.config import apply_overrides, load_config, locate_shared_data, recipe_module

    config = apply_overrides(load_config(args.config), args.set or [])
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    config = locate_shared_data(config)
    result = recipe_module(config).run(config)
    if _rank() == 0:  # under torchrun the other ranks' results are their partial view: rank 0 reports
        print(json.dumps(_jsonable(result), indent=2))
    return 0


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    import os

    return int(os.environ.get("RANK", "0"))


def _evaluate(args: argparse.Namespace) -> int:
    from tsfm_training.evaluate import evaluate_folders

    summary = evaluate_folders(Path(args.predictions), Path(args.references), Path(args.output),
                               classes=_parse_classes(args.classes), tolerance_mm=args.tolerance)
    print(json.dumps(_jsonable(summary), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tsfm_training.export import export_checkpoint

    path = export_checkpoint(Path(args.checkpoint), Path(args.card), Path(args.output), model_id=args.id)
    print(path)
    return 0


def _parse_classes(text: str | None) -> dict[int, str] | None:
    """``1=tumour,2=kidney`` -> {1: 'tumour', 2: 'kidney'}."""
    if not text:
        return None
    classes: dict[int, str] = {}
    for item in text.split(","):
        label, sep, name = item.partition("=")
        if not sep or not label.strip().isdigit():
            raise ValueError(f"--classes item {item!r} must look like LABEL=name, e.g. 1=tumour")
        classes[int(label)] = name.strip()
    return classes


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsfm-train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train with a recipe config (YAML)")
    run.add_argument("config", help="config file, or the name of a bundled one (e.g. stunet_s_totalseg_smoke)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config value, e.g. --set loop.steps=100 (repeatable)")
    run.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    run.set_defaults(run=_run)

    evaluate = sub.add_parser("evaluate", help="Dice and normalised surface Dice of label maps, per class and case")
    evaluate.add_argument("predictions", help="folder of predicted label maps (NIfTI/NRRD), named like the references")
    evaluate.add_argument("references", help="folder of reference label maps")
    evaluate.add_argument("--output", required=True, help="folder for metrics.csv and summary.json")
    evaluate.add_argument("--classes", help="labels to score, e.g. 1=tumour,2=kidney (default: all in references)")
    evaluate.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    evaluate.set_defaults(run=_evaluate)

    export = sub.add_parser("export", help="write a training checkpoint as a model the backend loads")
    export.add_argument("checkpoint", help="training checkpoint (last.pt) or a state_dict file")
    export.add_argument("card", help="model card JSON describing the network")
    export.add_argument("output", help="destination folder (model.safetensors + model.json)")
    export.add_argument("--id", help="model id to record in the card (default: the card's)")
    export.set_defaults(run=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as error:
        print(f"tsfm-train {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
