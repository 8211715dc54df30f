"""Benchmark: training batches from every case held in RAM (the old path) against the memory-mapped store
read by DataLoader workers (the new path), on the real CTs of ../shared/data (TotalSegmentator's example
CT with its 41-class segmentation, and the soft-tissue sarcoma CTs with their tumour masks).

Each path runs in a fresh subprocess (its memory is its own) on the same cases, preprocessing and patch
size; the store is written beforehand (preprocessing is paid once in both paths and not timed).
- ``in_ram``: ``CaseCache`` arrays of every case in the process, ``PatchBatches`` + ``training_transforms``
  (MONAI ``RandCropByPosNegLabeld`` on the whole case) in the training process, as before;
- ``store``: ``StepBatches`` + ``PatchLoader`` over the store, with 0 and with ``--workers`` workers.
Printed per path: samples per second and the private memory the data costs each rank: anonymous memory
(PSS) of the training process above what it held after its imports, plus that of its workers; pages of
the memory-mapped store are page cache, shared by every rank and worker of the machine, and are printed
apart (file PSS). Ratios are to ``in_ram``. Then
the store format: ``.npy`` memory map against blosc2 chunks for one case (bytes on disk, patch reads per
second, both from the page cache).

    .venv/bin/python Testing/bench/bench_training_data.py --batches 30 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tsfm_backend.shared_data import shared_data_dir

DATA = shared_data_dir()
SPACING = (1.5, 1.5, 1.5)


def cases():
    from tsfm_training.data.datasets import Case, read_case_folders

    totalseg = Case("example_ct_sm", (DATA / "totalseg" / "example_ct_sm.nii.gz",),
                    DATA / "totalseg" / "example_seg.nii.gz", "totalseg")
    sts = read_case_folders(DATA / "sts", "ct.nii.gz", "mask.nii.gz", {1: "tumour"}, "sts").cases
    return [totalseg, *sts]


def settings():
    from tsfm_training.data.preprocess import Preprocessing

    return Preprocessing(SPACING, "kji", {"scheme": "zscore"})


def memory_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/smaps_rollup`` field (``Pss_Anon``, ``Pss_File``) in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def run_path(path: str, store: Path, batches: int, batch_size: int, patch: list[int], workers: int) -> dict:
    """One path in this process: time ``batches`` batches after a warm-up, then measure memory."""
    import torch

    torch.set_num_threads(1)
    import monai.transforms  # noqa: F401 - both paths import it; the baseline includes it
    import tsfm_training.data.loader  # noqa: F401

    baseline = memory_kib(os.getpid(), "Pss_Anon")
    all_cases = cases()
    lookup = np.arange(256, dtype=np.uint16)
    if path == "in_ram":
        from tsfm_training.data.preprocess import CaseCache
        from tsfm_training.data.sampler import PatchBatches, patch_sample_fn
        from tsfm_training.data.transforms import training_transforms

        prepared = [CaseCache(store / "in_ram_cache").get(case, settings()) for case in all_cases]
        iterator = iter(PatchBatches(prepared, patch_sample_fn(training_transforms(patch, 0.33, False)), batch_size))
    else:
        from tsfm_training.data.loader import (
            CaseRef,
            PatchLoader,
            PatchSettings,
            SegmentationSample,
            StepBatches,
        )
        from tsfm_training.data.store import ensure_store

        paths = ensure_store(all_cases, settings(), store / "store")
        sample = SegmentationSample(PatchSettings(tuple(patch), 0.33, 1, False, False))
        iterator = iter(PatchLoader(StepBatches([CaseRef(p, lookup) for p in paths], sample, batch_size),
                                    workers=workers, prefetch=2))
    next(iterator)  # workers started, caches warm
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    pids = children(os.getpid())
    return {"path": path, "workers": workers, "samples_per_s": batches * batch_size / seconds,
            "main_mib": (memory_kib(os.getpid(), "Pss_Anon") - baseline) / 1024,
            "workers_mib": sum(memory_kib(p, "Pss_Anon") for p in pids) / 1024,
            "file_mib": sum(memory_kib(p, "Pss_File") for p in [os.getpid(), *pids]) / 1024}


def store_formats(store: Path, patch: list[int], reads: int = 200) -> dict:
    """``.npy`` memory map vs blosc2 (zstd, 64^3 chunks) for the largest stored case: size and patch reads."""
    import blosc2
    from tsfm_training.data.foreground import read_window
    from tsfm_training.data.store import StoredCase

    stored = max((StoredCase(p.parent) for p in (store / "store").rglob("properties.json")),
                 key=lambda c: int(np.prod(c.shape)))
    image = np.asarray(stored.image)
    compressed = blosc2.asarray(image, chunks=(1, 64, 64, 64), urlpath=str(store / "image.b2nd"), mode="w",
                                cparams={"codec": blosc2.Codec.ZSTD, "clevel": 1})
    del compressed
    opened = blosc2.open(str(store / "image.b2nd"))
    rng = np.random.default_rng(0)
    centres = [tuple(int(rng.integers(0, s)) for s in stored.shape) for _ in range(reads)]
    timings = {}
    for name, reader in (("npy", lambda c: read_window(stored.image, c, patch)),
                         ("blosc2", lambda c: _blosc_window(opened, c, patch))):
        reader(centres[0])
        started = time.perf_counter()
        for centre in centres:
            reader(centre)
        timings[name] = reads / (time.perf_counter() - started)
    return {"case": stored.case_id, "shape": list(image.shape), "npy_mib": (stored.path / "image.npy").stat().st_size / 2**20,
            "blosc2_mib": (store / "image.b2nd").stat().st_size / 2**20, "npy_reads_per_s": timings["npy"],
            "blosc2_reads_per_s": timings["blosc2"]}


def _blosc_window(array, centre, size) -> np.ndarray:
    out = np.zeros((array.shape[0], *size), np.float32)
    source, target = [], []
    for c, s, n in zip(centre, size, array.shape[1:], strict=True):
        start = c - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[(slice(None), *target)] = array[(slice(None), *source)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", type=Path, default=None, help="reuse a store folder (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    store = args.store or Path(tempfile.mkdtemp(prefix="bench_training_data_"))
    if args.child:
        path, workers = args.child.split(":")
        print(json.dumps(run_path(path, store, args.batches, args.batch_size, args.patch, int(workers))))
        return 0

    from tsfm_training.data.preprocess import CaseCache
    from tsfm_training.data.store import ensure_store

    started = time.perf_counter()
    for case in cases():  # both paths' preprocessing, paid before timing
        CaseCache(store / "in_ram_cache").get(case, settings())
    ensure_store(cases(), settings(), store / "store")
    print(f"{len(cases())} cases at {SPACING} mm preprocessed in {time.perf_counter() - started:.0f} s; "
          f"patch {args.patch}, batch {args.batch_size}, {args.batches} batches per path")
    results = []
    for child in ("in_ram:0", "store:0", f"store:{args.workers}"):
        command = [sys.executable, __file__, "--child", child, "--store", str(store), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--patch", *map(str, args.patch)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    base = results[0]
    print(f"{'path':<8} {'workers':>7} {'samples/s':>10} {'ratio':>6} {'main MiB':>9} {'workers MiB':>12} "
          f"{'private':>8} {'ratio':>6} {'file PSS MiB':>13}")
    for r in results:
        total = r["main_mib"] + r["workers_mib"]
        print(f"{r['path']:<8} {r['workers']:>7} {r['samples_per_s']:>10.2f} {r['samples_per_s'] / base['samples_per_s']:>6.2f} "
              f"{r['main_mib']:>9.0f} {r['workers_mib']:>12.0f} {total:>8.0f} {total / base['main_mib']:>6.3f} "
              f"{r['file_mib']:>13.0f}")
    formats = store_formats(store, args.patch)
    print(f"store format, case {formats['case']} {formats['shape']}: .npy {formats['npy_mib']:.1f} MiB, "
          f"{formats['npy_reads_per_s']:.0f} patch reads/s; blosc2 (zstd 1, 64^3 chunks) {formats['blosc2_mib']:.1f} MiB "
          f"({formats['blosc2_mib'] / formats['npy_mib']:.2f}x), {formats['blosc2_reads_per_s']:.0f} reads/s "
          f"({formats['blosc2_reads_per_s'] / formats['npy_reads_per_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
