"""Choosing the compute device and describing it to people."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU (and says so); ``cuda``/``cuda:N``/``cpu`` are taken as asked."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("No CUDA GPU found: running on the CPU, which is much slower for large models.")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was requested but this torch build sees no CUDA GPU")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 convolutions beat float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Autocast dtype: bf16 (else fp16) on CUDA, bf16 on CPUs that compute it natively, else None (float32)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def describe_device(device: torch.device) -> dict[str, object]:
    """Name and memory of a device, as shown in ``tsfm-backend info`` and ``GET /v1/info``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {"type": "cuda", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
    return {"type": "cpu", "name": "CPU", "threads": torch.get_num_threads()}
