"""A real uvicorn server on a free loopback port, in a thread or as a ``tsfm-backend serve`` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TSFMSegmentation"
TEST_TOKEN = "server-test-token"


def module_on_path() -> None:
    """Make ``TSFMSegmentationLib`` importable (its Qt-free files need no Slicer)."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``GET /v1/health`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before it answered")
        try:
            if requests.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no healthy server at {url} after {timeout_s} s")


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1 from a background thread; use as a context manager."""

    def __init__(self, app, port: int | None = None) -> None:  # noqa: ANN001 - any ASGI app
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_until_healthy(self.url, 30.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_serve_process(port: int, *args: str, home: Path, log_path: Path,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m tsfm_backend.cli serve --port PORT ARGS`` with ``$TSFM_HOME=home``, output to ``log_path``."""
    env = {**os.environ, "TSFM_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "tsfm_backend.cli", "serve", "--port", str(port), "--device", "cpu", *args]
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def backend_app(model_paths: list[Path], **settings_overrides):  # noqa: ANN201 - (app, services)
    """``make_app`` over real Services serving the models at ``model_paths`` on the CPU."""
    import torch
    from tsfm_backend.server.app import make_app
    from tsfm_backend.server.services import ModelRegistry, Services
    from tsfm_backend.server.settings import Settings

    settings = Settings(**settings_overrides)
    device = torch.device("cpu")
    services = Services.start(settings, ModelRegistry.load([str(p) for p in model_paths], device), device)
    return make_app(settings, services), services


# Pools of a click U-Net that stops downsampling early: cheap enough for hundreds of clicks on a CPU.
SHALLOW_POOLS = [[1, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1], [1, 1, 1]]


def save_click_model(directory: Path, *, model_id: str = "tiny-click", preset: str = "tiny",
                     patch_size: tuple[int, int, int] = (8, 16, 16), pools: list | None = SHALLOW_POOLS,
                     seed: int = 0) -> Path:
    """A random click-conditioned U-Net (promptable) saved in our format; returns its folder.

    ``pools=None`` keeps the preset's five downsampling stages (then ``patch_size`` must be a
    multiple of (16, 32, 32) and at least twice that).
    """
    import torch
    from tsfm_backend.checkpoints import save_model
    from tsfm_backend.model_card import ModelCard
    from tsfm_backend.models import build_network

    architecture: dict = {"preset": preset}
    if pools is not None:
        architecture["pool_op_kernel_sizes"] = pools
    card = ModelCard(
        id=model_id, family="click_unet", architecture=architecture, kind="promptable",
        classes={1: "object"}, spacing=None, output="sigmoid", patch_size=patch_size,
        normalization={"scheme": "ct_clip_zscore", "lower": -1000.0, "upper": 1000.0, "mean": 0.0, "std": 300.0},
        license="Apache-2.0", provenance={"source": "random weights for tests"},
        description="Random click U-Net for server tests.",
    )
    torch.manual_seed(seed)
    return save_model(build_network(card), card, directory)


def read_ct(path: Path):  # noqa: ANN201 - (array KJI, spacing IJK, origin LPS, direction 9)
    """A CT as the module sends it: voxels (K, J, I) and ITK geometry."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
