"""``tsfm-backend predict``: automatic segmentation of one image, a DICOM folder or a folder of cases.

Under ``torchrun`` (or any launcher that sets ``RANK`` and ``WORLD_SIZE``) the sorted case list is
split round-robin, so several processes, GPUs or nodes share the work and no case is done twice;
each process uses GPU ``LOCAL_RANK`` when it runs on CUDA.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

HELP = "segment images with an automatic model (file, DICOM folder or folder of cases)"

log = logging.getLogger(__name__)

OUTPUT_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "seg.nrrd": ".seg.nrrd"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True, help="installed model id or path to a checkpoint")
    parser.add_argument(
        "-i", "--input", required=True, type=Path, help="image file, DICOM folder or folder of cases"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="output file (one case) or folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--step", type=float, default=None,
        help="window stride as a fraction of the patch (default: the model's, 0.5 for most)"
    )
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x slower)")
    parser.add_argument(
        "--fast", action="store_true", help="argmax on the model grid, then nearest neighbour back"
    )
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument("--max-windows", type=int, default=10_000,
                        help="refuse a case that needs more sliding windows than this (default 10000)")
    parser.add_argument("--max-job-gb", type=float, default=16.0,
                        help="refuse a case whose estimated working memory exceeds this many GiB (default 16)")
    parser.add_argument(
        "--no-amp",
        action="store_true",
        help="float32 throughout (no bf16/fp16 autocast on CUDA or bf16-capable CPUs)",
    )
    parser.add_argument(
        "--largest-component", action="store_true", help="keep the largest component per class"
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill cavities enclosed by a class")
    parser.add_argument(
        "--crop-to-body", action="store_true", help="run only on the bounding box of the body"
    )
    parser.add_argument(
        "--format",
        choices=sorted(OUTPUT_FORMATS),
        default="nii.gz",
        help="output format when writing into a folder (default nii.gz; seg.nrrd keeps names for Slicer)",
    )


def find_cases(source: Path) -> list[Path]:
    """The images to segment: the file itself, a DICOM folder, or each image file and DICOM subfolder."""
    from tsfm_backend.image_io import ImageReadError, dicom_series, is_image_file

    if not source.exists():
        raise ImageReadError(f"{source}: no such file or folder")
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ImageReadError(f"{source}: is not a regular file or a folder (a pipe, socket or device?); give an "
                             "image file, a DICOM folder or a folder of cases")
    files = sorted(p for p in source.iterdir() if is_image_file(p) and not p.name.lower().endswith(".dcm"))
    folders = sorted(p for p in source.iterdir() if p.is_dir() and dicom_series(p))
    if files or folders:
        return files + folders
    if dicom_series(source):
        return [source]
    raise ImageReadError(f"{source}: folder holds no image files, DICOM series or case folders")


def shard(cases: list[Path], rank: int, world_size: int) -> list[Path]:
    """The cases process ``rank`` of ``world_size`` does: every ``world_size``-th of the sorted list."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return sorted(cases)[rank::world_size]


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) when not distributed."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None
    return rank, world, local


def output_path(case: Path, single: bool, output: Path, fmt: str) -> Path:
    """Where a case's labels go: ``output`` itself when one case goes to a file name, else ``output/<case><suffix>``."""
    from tsfm_backend.image_io import IMAGE_SUFFIXES, image_stem

    if single and output.name.lower().endswith(IMAGE_SUFFIXES) and not output.is_dir():
        return output
    return output / (image_stem(case) + OUTPUT_FORMATS[fmt])


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.device import resolve_device
    from tsfm_backend.image_io import read_volume
    from tsfm_backend.inference.segmenter import (
        JobTooLarge,
        LimitNames,
        SegmentOptions,
        check_plan,
        plan_segmentation,
        segment_volume,
    )
    from tsfm_backend.label_io import write_labels

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.step is not None and not 0 < args.step <= 1:
        raise ValueError(f"--step must be in (0, 1], got {args.step}")
    if args.max_windows < 1 or not args.max_job_gb > 0:
        raise ValueError("--max-windows must be at least 1 and --max-job-gb positive")
    # Checked per case from its shape before anything is allocated: a tiny --step would otherwise
    # build millions of windows and end in a MemoryError.
    max_bytes = int(args.max_job_gb * (1 << 30))
    names = LimitNames(step="--step", max_windows="--max-windows", max_bytes="--max-job-gb")
    rank, world, local_rank = distributed_rank()
    device = resolve_device(args.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    cases = find_cases(args.input)
    mine = shard(cases, rank, world)
    if world > 1:
        log.info("process %d of %d: %d of %d cases", rank, world, len(mine), len(cases))
    loaded = load_model(args.model, device=device)
    loaded.card.require_trained_head()
    options = SegmentOptions(
        step=args.step,
        tta=args.tta,
        batch_size=args.batch,
        fast=args.fast,
        amp=not args.no_amp,
        largest_component=args.largest_component,
        fill_holes=args.fill_holes,
        crop_to_body=args.crop_to_body,
    )
    for number, case in enumerate(mine, start=1):
        target = output_path(case, cases == [args.input], args.output, args.format)
        started = time.perf_counter()
        volume = read_volume(case)
        try:
            check_plan(plan_segmentation(loaded.card, volume, options), loaded.card, options, args.max_windows,
                       max_bytes, names)
        except JobTooLarge as error:
            raise JobTooLarge(f"{case}: {error}", error.limit) from None
        with tqdm(total=100, desc=f"[{number}/{len(mine)}] {case.name}", unit="%", leave=True) as bar:

            def progress(fraction: float, _message: str, bar=bar) -> None:
                bar.update(round(100 * fraction) - bar.n)

            result = segment_volume(loaded, volume, options, device=device, progress=progress,
                                    max_windows=args.max_windows, max_bytes=max_bytes, limit_names=names)
        written = write_labels(result.labels, volume, result.names, target)
        log.info("%s -> %s (%.1f s)", case, ", ".join(str(p) for p in written), time.perf_counter() - started)
    return 0
