"""``tsfm-backend info``: versions and the device that inference would use."""

from __future__ import annotations

import argparse
import json
import platform

HELP = "show package versions and the compute device"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    import torch

    import tsfm_backend
    from tsfm_backend.device import describe_device, resolve_device

    info = {
        "tsfm_backend": tsfm_backend.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": describe_device(resolve_device(args.device)),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0
