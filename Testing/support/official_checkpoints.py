"""Writers for checkpoint files in the layouts the official projects save them (nnU-Net v1/v2, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tsfm_backend.models import stunet


def write_v1_checkpoint(path: Path, network: torch.nn.Module, epoch: int = 4000) -> Path:
    """A ``.model`` file as nnU-Net v1's ``NetworkTrainer.save_checkpoint`` writes it."""
    first = next(iter(network.state_dict()))
    torch.save(
        {
            "epoch": epoch,
            "state_dict": network.state_dict(),
            "optimizer_state_dict": {
                "state": {0: {"momentum_buffer": torch.zeros(3)}},
                "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True, "params": [0]}],
            },
            "lr_scheduler_state_dict": None,
            "plot_stuff": ([np.float64(0.9), np.float64(0.8)], [np.float32(0.95)], [], [np.float64(0.5)]),
            "best_stuff": (epoch, np.float64(0.42), np.float64(0.4), first),
            "amp_grad_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3},
        },
        path,
    )
    return path


def write_v2_results(folder: Path, network: torch.nn.Module, trainer: str, labels: dict[str, int]) -> Path:
    """``plans.json``, ``dataset.json`` and ``fold_0/checkpoint_final.pth`` of an nnU-Net v2 results folder."""
    pools = network.pool_op_kernel_sizes
    plans = {
        "dataset_name": "Dataset123_Liver",
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "patch_size": [32, 64, 64],
                "spacing": [2.5, 0.8, 0.8],
                "normalization_schemes": ["CTNormalization"],
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {"strides": [[1, 1, 1], *pools], "kernel_sizes": [[3, 3, 3]] * 6},
                },
            },
        },
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 99.4, "std": 39.4, "percentile_00_5": -17.0, "percentile_99_5": 201.0}
        },
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}, "file_ending": ".nii.gz"}
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "fold_0").mkdir()
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(
        {
            "network_weights": network.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.7)], "epoch_end_timestamps": [1.7e9]},
            "_best_ema": np.float64(0.71),
            "current_epoch": 1000,
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": 0,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        checkpoint,
    )
    return checkpoint


def stunet_for(preset: str, num_classes: int, pools: list[list[int]], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return stunet.build(1, num_classes, preset, pool_op_kernel_sizes=pools).eval()


def write_pymic_checkpoint(path: Path, network: torch.nn.Module) -> Path:
    """A PyMIC ``.pt`` as MIS-FM's trainer saves it (``model_state_dict`` + training state)."""
    torch.save(
        {
            "iteration": 80000,
            "valid_pred": np.float64(0.81),
            "model_state_dict": network.state_dict(),
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]},
        },
        path,
    )
    return path


def write_suprem_checkpoint(path: Path, network: torch.nn.Module, *, universal: bool) -> Path:
    """A SuPreM ``.pth`` saved from DDP: ``module.backbone.<key>`` plus Universal-model heads, or
    ``module.<key>`` for a bare network."""
    if universal:
        weights = {f"module.backbone.{k}": v for k, v in network.state_dict().items() if not k.startswith("out_tr.")}
        weights["module.precls_conv.2.weight"] = torch.zeros(8, 48, 1, 1, 1)
        weights["module.controller.weight"] = torch.zeros(153, 512, 1, 1, 1)
        weights["module.organ_embedding"] = torch.zeros(32, 512)
    else:
        weights = {f"module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"net": weights, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None, "epoch": 2100}, path)
    return path
