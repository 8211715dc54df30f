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
    """A SuPreM ``.pth`` saved from DDP.

    ``universal``: the Universal Model layout of the released unet/swinunetr files (``network`` built with
    ``head="universal"``): ``module.organ_embedding`` first, then ``module.backbone.<key>`` for the body and
    ``module.<key>`` for the head modules, in the authors' state_dict order. Otherwise ``module.<key>``
    for a bare network (the SegResNet release).
    """
    from tsfm_backend.models.suprem import UNIVERSAL_HEAD_KEYS

    if universal:
        weights = {(f"module.{k}" if k.startswith(UNIVERSAL_HEAD_KEYS) else f"module.backbone.{k}"): v
                   for k, v in network.state_dict().items()}
    else:
        weights = {f"module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"net": weights, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None, "epoch": 2100}, path)
    return path


def write_suprem_backbone(path: Path, network: torch.nn.Module) -> Path:
    """``{backbone}_backbone.pth`` as SuPreM's pretraining also saves it: the body's state_dict, no prefix,
    no head (``network`` built with the conv head, which is left out)."""
    from tsfm_backend.models.suprem import HEAD_KEYS

    heads = HEAD_KEYS["unet"] + HEAD_KEYS["swinunetr"]
    weights = {k: v for k, v in network.state_dict().items() if not k.startswith(heads)}
    torch.save({"net": weights, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None, "epoch": 2100}, path)
    return path


def write_sam3d_checkpoint(path: Path, network: torch.nn.Module) -> Path:
    """A 3DSAM-adapter ``{last,best}.pth.tar`` as the authors' ``train.py`` saves it: ``encoder_dict`` with
    each shifted block's ``attn_mask``, ``decoder_dict`` and four prompt encoders in ``feature_dict``."""
    encoder = dict(network.image_encoder.state_dict())
    for index, block in enumerate(network.image_encoder.blocks):
        if block.attn_mask is not None:
            encoder[f"blocks.{index}.attn_mask"] = block.attn_mask.clone()
    prompt = dict(network.prompt_encoder.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 500, "encoder_dict": encoder, "decoder_dict": dict(network.mask_decoder.state_dict()),
                "feature_dict": [prompt] * 4}, path)
    return path
