"""Benchmark: the same STU-Net, weights and real CT through our engine, MONAI and nnU-Net v2, file to file.

Each engine runs in a fresh subprocess (so peak RSS is its own) on the same model: our engine
through ``segment_volume``; MONAI's ``sliding_window_inference`` (same patch, overlap = 1 - step,
Gaussian mode, sigma 1/8) inside a plain MONAI-style script (z-score, resize, infer, resize the
logits back, argmax); nnU-Net v2's ``nnUNetPredictor`` given a synthetic model folder (plans.json,
dataset.json, fold_0/checkpoint_final.pth, trainer ``nnUNetTrainer``) and our very network object
through ``manual_initialization``, with linear resampling in its plans so all three resample alike.
Printed per engine: wall time from reading the file to the written label map, network-only time
(sum of forward passes), engine overhead, peak RSS (and peak CUDA memory), voxel agreement with our
output, and the ratios against ours.

    .venv/bin/python Testing/bench/bench_predict.py --preset S --patch 96 --classes 4
    .venv/bin/python Testing/bench/bench_predict.py --preset tiny --classes 104 --resize 300 512 512 \\
        --spacing-in 1.5 0.78 0.78 --engines ours --fast
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tsfm_backend.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = shared_data_dir() / "totalseg" / "example_ct.nii.gz"
ENGINES = ("ours", "monai", "nnunet")
POINTWISE = "pointwise"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", type=Path, default=DEFAULT_IMAGE, help="input CT (default: example_ct.nii.gz)"
    )
    parser.add_argument(
        "--preset",
        default="S",
        help="STU-Net preset tiny, S, B, L, H, or 'pointwise' (a 1x1x1 conv) (default S)",
    )
    parser.add_argument(
        "--classes", type=int, default=4, help="foreground classes (network outputs classes + 1)"
    )
    parser.add_argument("--patch", type=int, nargs="+", default=[96], help="patch size, one or three numbers")
    parser.add_argument(
        "--spacing", type=float, default=1.5, help="model spacing in mm, isotropic (default 1.5)"
    )
    parser.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass (ours and MONAI)")
    parser.add_argument(
        "--fast", action="store_true", help="our engine in fast mode (argmax before resampling)"
    )
    parser.add_argument("--skip-outside-body", action="store_true", help="our engine skips air-only windows")
    parser.add_argument("--no-amp", action="store_true", help="our engine in float32 (equal settings on CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per engine")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of ours,monai,nnunet"
    )
    parser.add_argument(
        "--resize", type=int, nargs=3, metavar=("K", "J", "I"), help="resample the CT to this size"
    )
    parser.add_argument(
        "--spacing-in",
        type=float,
        nargs=3,
        metavar=("K", "J", "I"),
        help="with --resize: voxel spacing in mm of the resized CT (default: keep the CT's extent); air fills the rest",
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per engine in one process; the best is compared"
    )
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def patch_of(args: argparse.Namespace) -> tuple[int, int, int]:
    patch = args.patch * 3 if len(args.patch) == 1 else args.patch
    if len(patch) != 3:
        raise SystemExit("--patch takes one or three numbers")
    return tuple(patch)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- setup
def make_input(args: argparse.Namespace, work: Path) -> Path:
    """The benchmark image: the real CT, or the real CT resampled linearly to ``--resize`` voxels."""
    if not args.resize:
        return args.image
    import SimpleITK as sitk

    image = sitk.ReadImage(str(args.image))
    size_ijk = list(reversed(args.resize))
    if args.spacing_in:
        spacing = list(reversed(args.spacing_in))
    else:
        spacing = [o * s / n for o, s, n in zip(image.GetSize(), image.GetSpacing(), size_ijk, strict=True)]
    resampled = sitk.Resample(
        image,
        size_ijk,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        -1024,
        sitk.sitkInt16,
    )
    path = work / "input.nii.gz"
    sitk.WriteImage(resampled, str(path), useCompression=True)
    return path


def make_model(args: argparse.Namespace, work: Path) -> Path:
    """A random STU-Net of the chosen preset saved in our format; every engine loads these weights."""
    import torch
    from tsfm_backend.checkpoints import save_model
    from tsfm_backend.model_card import ModelCard
    from tsfm_backend.models import build_network

    patch = patch_of(args)
    pools, size = [], list(patch)
    for _ in range(5):
        kernel = [2 if s % 2 == 0 and s >= 8 else 1 for s in size]
        size = [s // k for s, k in zip(size, kernel, strict=True)]
        pools.append(kernel)
    card = ModelCard(
        id=f"bench-stunet-{args.preset}",
        family="stunet",
        architecture={
            "preset": args.preset,
            "input_channels": 1,
            "num_classes": args.classes + 1,
            "pool_op_kernel_sizes": pools,
        },
        classes={i: f"class_{i}" for i in range(1, args.classes + 1)},
        spacing=(args.spacing,) * 3,
        normalization={"scheme": "zscore"},
        patch_size=patch,
        provenance={"source": "random weights for benchmarking"},
    )
    if args.preset == POINTWISE:
        # Near-free network for measuring the engines' own memory and time: one 1x1x1 convolution.
        card.family, card.architecture = "pointwise", {"num_classes": args.classes + 1}
        (work / "model").mkdir(parents=True, exist_ok=True)
        card.write(work / "model" / "model.json")
        return work / "model"
    torch.manual_seed(args.seed)
    return save_model(build_network(card), card, work / "model")


def load_bench_model(args: argparse.Namespace, work: Path, device):
    """The benchmark model on ``device``: our loader for STU-Nets, a seeded 1x1x1 convolution for ``pointwise``."""
    import torch
    from tsfm_backend.checkpoints import LoadedModel, load_model
    from tsfm_backend.model_card import ModelCard

    if args.preset != POINTWISE:
        return load_model(work / "model", device=device)
    card = ModelCard.read(work / "model" / "model.json")
    torch.manual_seed(args.seed)
    return LoadedModel(torch.nn.Conv3d(1, card.num_classes, 1).to(device).eval(), card)


# ---------------------------------------------------------------------------------------------- worker
class Timed:
    """Wraps a network; sums the wall time of its forward passes (synchronising CUDA)."""

    def __init__(self, network, device):
        import torch

        class TimedNetwork(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.net = inner
                self.seconds = 0.0
                self.calls = 0

            def forward(self, x):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                out = self.net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.seconds += time.perf_counter() - start
                self.calls += 1
                return out

        self.module = TimedNetwork(network)


def run_ours(args, loaded, timed, image: Path, out: Path) -> None:
    from tsfm_backend.checkpoints import LoadedModel
    from tsfm_backend.image_io import read_volume
    from tsfm_backend.inference.segmenter import SegmentOptions, segment_volume
    from tsfm_backend.label_io import write_labels

    options = SegmentOptions(
        step=args.step,
        batch_size=args.batch,
        fast=args.fast,
        skip_outside_body=args.skip_outside_body,
        amp=not args.no_amp,
    )
    volume = read_volume(image)
    result = segment_volume(LoadedModel(timed, loaded.card), volume, options, device=args.device)
    write_labels(result.labels, volume, result.names, out)


def run_monai(args, loaded, timed, image: Path, out: Path) -> None:
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import NormalizeIntensity, Resize
    from tsfm_backend.preprocessing import network_shape_for

    card = loaded.card
    sitk_image = sitk.ReadImage(str(image))
    array = torch.from_numpy(sitk.GetArrayFromImage(sitk_image).astype(np.float32))[None].to(args.device)
    spacing_kji = tuple(reversed(sitk_image.GetSpacing()))
    shape = network_shape_for(array.shape[1:], spacing_kji, card.spacing)
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=array.device.type == "cuda")
    with torch.inference_mode(), amp:
        x = Resize(shape, mode="trilinear")(NormalizeIntensity()(array))
        logits = sliding_window_inference(
            x[None],
            roi_size=card.patch_size,
            sw_batch_size=args.batch,
            predictor=timed,
            overlap=1 - args.step,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
            cval=0.0,
        )[0].float()
        logits = Resize(tuple(array.shape[1:]), mode="trilinear")(logits)
        labels = torch.as_tensor(logits).argmax(0).to(torch.uint8).cpu().numpy()
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(sitk_image)
    sitk.WriteImage(result, str(out), useCompression=True)


def nnunet_folder(loaded, timed, work: Path) -> tuple[dict, dict]:
    """Synthetic nnU-Net v2 model folder for our network; returns (plans, dataset_json)."""
    import torch

    card = loaded.card
    folder = work / "nnunet" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    resample_kwargs = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset999_Bench",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(card.spacing),
        "original_median_shape_after_transp": [1, 1, 1],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 0.0, "std": 1.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(card.patch_size),
                "median_image_size_in_voxels": [1, 1, 1],
                "spacing": list(card.spacing),
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample_kwargs,
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_seg_kwargs": {**resample_kwargs, "is_seg": True},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": resample_kwargs,
                "architecture": {
                    "network_class_name": "tsfm_backend.models.stunet.STUNet",
                    "arch_kwargs": dict(card.architecture),
                    "_kw_requires_import": [],
                },
                "batch_dice": False,
            }
        },
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{n: k for k, n in card.classes.items()}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.save(
        {
            "network_weights": timed.state_dict(),
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres", "fold": 0},
            "inference_allowed_mirroring_axes": None,
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return plans, dataset


def run_nnunet(args, loaded, timed, image: Path, out: Path) -> None:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset = nnunet_folder(loaded, timed, Path(args.work))
    checkpoint = torch.load(
        Path(args.work)
        / "nnunet"
        / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        / "fold_0"
        / "checkpoint_final.pth",
        map_location="cpu",
        weights_only=True,
    )
    manager = PlansManager(plans)
    device = torch.device(args.device)
    predictor = nnUNetPredictor(
        tile_step_size=args.step,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        timed,
        manager,
        manager.get_configuration("3d_fullres"),
        [checkpoint["network_weights"]],
        dataset,
        "nnUNetTrainer",
        None,
    )
    started = time.perf_counter()
    data, properties = SimpleITKIO().read_images([str(image)])
    truncated = str(out)[: -len(".nii.gz")]
    predictor.predict_single_npy_array(data, properties, None, truncated, False)
    return started


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # nnU-Net and our engine set it; give MONAI the same
    work = Path(args.work)
    loaded = load_bench_model(args, work, device)
    timed = Timed(loaded.network, device).module.to(device).eval()
    image = Path((work / "input.txt").read_text().strip())
    out = work / f"{args.worker}.nii.gz"
    runner = {"ours": run_ours, "monai": run_monai, "nnunet": run_nnunet}[args.worker]
    walls, network = [], []
    for _ in range(args.repeat):
        timed.seconds, timed.calls = 0.0, 0
        started = time.perf_counter()
        late_start = runner(args, loaded, timed, image, out)
        walls.append(time.perf_counter() - (late_start or started))
        network.append(timed.seconds)
    best = min(range(len(walls)), key=walls.__getitem__)
    rusage = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    result = {
        "engine": args.worker,
        "wall_s": walls[best],
        "network_s": network[best],
        "first_wall_s": walls[0],
        "walls_s": walls,
        "forward_calls": timed.calls,
        "peak_rss_mb": rusage / 1024,
        "output": str(out),
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- report
def agreement(path_a: str, path_b: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(path_a))
    b = sitk.GetArrayFromImage(sitk.ReadImage(path_b))
    if a.shape != b.shape:
        return float("nan")
    return float(np.mean(a == b))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engines {unknown}; choose from {ENGINES}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    image = make_input(args, work)
    (work / "input.txt").write_text(str(image))
    make_model(args, work)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    reader.ReadImageInformation()
    print(
        f"image {image} size (I,J,K) {reader.GetSize()} spacing {tuple(round(s, 3) for s in reader.GetSpacing())}"
    )
    print(
        f"model STU-Net {args.preset}, {args.classes + 1} outputs, patch {patch_of(args)}, spacing {args.spacing} mm, "
        f"step {args.step}, batch {args.batch}, device {args.device}, {args.threads} threads, "
        f"ours: fast={args.fast} skip_outside_body={args.skip_outside_body} amp={not args.no_amp}"
    )
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for engine in engines:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *forwarded,
            "--work",
            str(work),
            "--worker",
            engine,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "nnUNet_compile": "f"}
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env.setdefault(name, str(work / name))
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{engine}: FAILED\n{completed.stderr[-3000:]}")
            continue
        results[engine] = json.loads((work / f"{engine}.json").read_text())
    reference = results.get("ours")
    header = (
        f"{'engine':<8} {'1st s':>7} {'wall s':>8} {'net s':>8} {'overhead':>9} {'calls':>6} {'peak RSS MB':>12} "
        f"{'CUDA MB':>8} {'agree':>8} {'wall/ours':>10} {'RSS/ours':>9}"
    )
    print(header)
    print("-" * len(header))
    for engine, r in results.items():
        overhead = (r["wall_s"] - r["network_s"]) / r["network_s"] if r["network_s"] else float("nan")
        agree = agreement(reference["output"], r["output"]) if reference else float("nan")
        wall_ratio = r["wall_s"] / reference["wall_s"] if reference else float("nan")
        rss_ratio = r["peak_rss_mb"] / reference["peak_rss_mb"] if reference else float("nan")
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        print(
            f"{engine:<8} {r['first_wall_s']:>7.2f} {r['wall_s']:>8.2f} {r['network_s']:>8.2f} {overhead:>8.1%} {r['forward_calls']:>6} "
            f"{r['peak_rss_mb']:>12.0f} {cuda:>8} {agree:>8.4%} {wall_ratio:>10.3f} {rss_ratio:>9.3f}"
        )
    if reference:
        for engine in ("nnunet", "monai"):
            if engine in results:
                r = results[engine]
                print(
                    f"ours / {engine}: wall {reference['wall_s'] / r['wall_s']:.3f}x, "
                    f"peak RSS {reference['peak_rss_mb'] / r['peak_rss_mb']:.3f}x"
                )
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
