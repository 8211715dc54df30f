"""Start and stop a local backend server: ``python -m tsfm_backend.cli serve`` on a free loopback port.

Imports no slicer, qt or vtk (plain pytest runs it). The Python is the caller's choice: Slicer's
own (``sys.executable`` inside Slicer is PythonSlicer) or an existing environment with CUDA torch.
When that Python cannot import ``tsfm_backend`` by itself, the copy that ships with the module
(``TSFMSegmentationBackend/`` next to the module when installed, ``Backend/`` in a source tree) is put
on its ``PYTHONPATH``. The server runs in its own process group so that stopping it ends the whole
tree (workers included), and ``atexit`` stops it when Slicer quits.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"
MODULE_DIR = Path(__file__).resolve().parents[1]


class BackendStartError(RuntimeError):
    """The local server did not come up; the message carries the end of its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def bundled_backend_dirs(module_dir: Path = MODULE_DIR) -> list[Path]:
    """Folders holding a ``tsfm_backend`` package that ships with the module, most specific first."""
    candidates = [module_dir / "TSFMSegmentationBackend", module_dir.parent / "TSFMSegmentationBackend",
                  module_dir.parent / "Backend"]
    return [path for path in candidates if (path / "tsfm_backend" / "__init__.py").is_file()]


def backend_environment(python: str, extra_path: list[Path] | None = None) -> dict[str, str]:
    """The environment for the server: the bundled backend on PYTHONPATH, proxies off for loopback."""
    env = dict(os.environ)
    paths = [str(p) for p in (extra_path if extra_path is not None else bundled_backend_dirs())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY", ""), LOOPBACK, "localhost"]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def can_import_backend(python: str, extra_path: list[Path] | None = None, timeout_s: float = 60.0) -> bool:
    """Whether ``python`` imports tsfm_backend and its server dependencies (not torch: that is slow)."""
    probe = "import tsfm_backend, fastapi, uvicorn"
    try:
        result = subprocess.run([python, "-c", probe], env=backend_environment(python, extra_path),
                                capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class LocalBackend:
    """One server process on loopback.

    Args:
        python: interpreter that runs the backend.
        port: TCP port (a free one when None).
        device: "auto", "cpu" or "cuda" (passed to ``serve --device``).
        extra_args: more ``serve`` arguments (e.g. ["--models", "my-model"]).
        extra_path: folders put first on PYTHONPATH (the bundled backend when None).
        env: extra environment variables (e.g. TSFM_HOME).
    """

    def __init__(self, python: str = sys.executable, port: int | None = None, device: str = "auto",
                 extra_args: list[str] | None = None, extra_path: list[Path] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.python = python
        self.port = port or free_port()
        self.device = device
        self.extra_args = list(extra_args or [])
        self.extra_path = extra_path
        self.env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"tsfm-backend-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [self.python, "-m", "tsfm_backend.cli", "serve", "--host", LOOPBACK, "--port", str(self.port),
                "--device", self.device, *self.extra_args]

    def start(self, timeout_s: float = 120.0, on_wait: Callable[[float], None] | None = None) -> str:
        """Launch the server and wait until ``/v1/health`` answers; returns its URL.

        ``on_wait(elapsed_s)`` is called while waiting (Slicer uses it to keep the GUI responsive).
        """
        if self.is_running():
            return self.url
        env = backend_environment(self.python, self.extra_path)
        env.update(self.env)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
        kwargs: dict = {"stdout": log, "stderr": subprocess.STDOUT, "env": env, "stdin": subprocess.DEVNULL}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        try:
            self.process = subprocess.Popen(self.command(), **kwargs)
        except OSError as error:
            raise BackendStartError(f"cannot run {self.python!r}: {error}") from error
        finally:
            log.close()
        atexit.register(self.stop)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise BackendStartError(f"the backend exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self._healthy():
                return self.url
            if on_wait is not None:
                on_wait(time.monotonic() - started)
            time.sleep(0.2)
        self.stop()
        raise BackendStartError(f"the backend did not answer on {self.url} within {timeout_s:.0f} s:\n"
                                f"{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with requests.Session() as http:
                http.trust_env = False
                return http.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200
        except requests.RequestException:
            return False

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the server and everything it started; harmless when it is not running."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if os.name != "nt":
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)
