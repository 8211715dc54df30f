"""Start and stop a local backend server: ``python -m tsfm_backend.cli serve`` on a free loopback port.

Imports no slicer, qt or vtk (plain pytest runs it). The Python is the caller's choice: Slicer's
own (``sys.executable`` inside Slicer is PythonSlicer) or an existing environment with CUDA torch.
When that Python cannot import ``tsfm_backend`` by itself, the copy that ships with the module
(``TSFMSegmentationBackend/`` next to the module when installed, ``Backend/`` in a source tree) is put
on its ``PYTHONPATH``. The server runs in its own process group so that stopping it ends the whole
tree (workers included), and ``atexit`` stops it when Slicer quits.

Inside Slicer, ``os.environ`` carries Slicer's own PYTHONHOME, PYTHONPATH and library paths. Another
interpreter started with them loads Slicer's standard library and dies at start ("SRE module
mismatch"), so for such an interpreter the caller passes ``base_env`` (Slicer's
``slicer.util.startupEnvironment()``: the environment from before the launcher changed it) and
``backend_environment`` also drops any PYTHONHOME and PYTHONPATH left in it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

LOOPBACK = "127.0.0.1"
MODULE_DIR = Path(__file__).resolve().parents[1]
# The backend uses ``X | None`` at run time and zip(strict=): Python 3.10 (Slicer 5.10 ships 3.12).
MIN_PYTHON = (3, 10)
BACKEND_IMPORTS = ("tsfm_backend", "fastapi", "uvicorn")
# Environment variables that point an interpreter at another Python's standard library or packages.
_FOREIGN_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH")
# Absent from the subprocess module outside Windows; the values are the Win32 process creation flags.
_CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
_CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)

_PROBE_PREFIX = "tsfm-probe: "
# Run by the candidate interpreter itself, which may be old: it must parse under Python 2.7 and 3.6
# (no f-strings, no annotations). It prints the version before importing anything, so that a too old
# Python is named as such instead of failing on some later syntax error.
_PROBE_SCRIPT = """
import sys
v = sys.version_info
sys.stdout.write("tsfm-probe: version %d.%d.%d\\n" % (v[0], v[1], v[2]))
sys.stdout.flush()
if (v[0], v[1]) < (int(sys.argv[1]), int(sys.argv[2])):
    sys.exit(0)
for name in sys.argv[3:]:
    try:
        __import__(name)
    except BaseException:
        e = sys.exc_info()[1]
        lines = str(e).strip().splitlines() or [""]
        sys.stdout.write("tsfm-probe: missing %s\\n" % name)
        sys.stdout.write("tsfm-probe: error %s: %s\\n" % (type(e).__name__, lines[-1]))
        sys.stdout.flush()
        sys.exit(3)
sys.stdout.write("tsfm-probe: ok\\n")
"""


class BackendStartError(RuntimeError):
    """The local server did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class BackendProbe:
    """Whether an interpreter can run the backend; ``problem`` says why not, in words a user can act on."""

    ok: bool
    version: tuple[int, int, int] | None
    problem: str


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


def is_same_interpreter(python: str, current: str = sys.executable) -> bool:
    """Whether ``python`` is the interpreter ``current`` (symlinks and relative parts resolved).

    The caller uses it to decide whether the interpreter may inherit this process's environment
    (Slicer's own PythonSlicer may; any other Python needs ``base_env``).
    """
    def resolved(path: str) -> str:
        return os.path.normcase(os.path.realpath(shutil.which(path) or path))

    return bool(python) and bool(current) and resolved(python) == resolved(current)


def backend_environment(python: str, extra_path: list[Path] | None = None,
                        base_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the server: the bundled backend on PYTHONPATH, proxies off for loopback.

    Args:
        python: the interpreter that will run (kept for symmetry with the callers; not inspected).
        extra_path: folders put first on PYTHONPATH (the bundled backend when None).
        base_env: the environment to start from instead of this process's; its PYTHONHOME and
            PYTHONPATH are dropped because they belong to another Python (see the module docstring).
    """
    if base_env is None:
        env = dict(os.environ)
    else:
        # Windows spells variable names in any case, so compare them upper-cased.
        env = {key: value for key, value in base_env.items() if key.upper() not in _FOREIGN_PYTHON_VARIABLES}
    paths = [str(p) for p in (extra_path if extra_path is not None else bundled_backend_dirs())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY", ""), LOOPBACK, "localhost"]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def popen_options(os_name: str, own_group: bool = True) -> dict[str, Any]:
    """``subprocess`` keywords for a background child on ``os_name`` (``os.name``: "nt" or "posix").

    On Windows a console program started from a GUI application (Slicer) opens a console window of
    its own unless CREATE_NO_WINDOW is set; a new process group lets ``stop`` end the whole tree.
    Elsewhere a new session gives the server its own process group for ``os.killpg``.
    """
    if os_name == "nt":
        return {"creationflags": _CREATE_NO_WINDOW | (_CREATE_NEW_PROCESS_GROUP if own_group else 0)}
    return {"start_new_session": True} if own_group else {}


def _last_lines(text: bytes | str, count: int = 6) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def probe_backend(python: str, extra_path: list[Path] | None = None, base_env: dict[str, str] | None = None,
                  timeout_s: float = 60.0, minimum: tuple[int, int] = MIN_PYTHON) -> BackendProbe:
    """Run ``python`` once to learn its version and whether it imports the backend's server packages.

    The version is checked before any import (an old Python fails on the backend's syntax with an
    unhelpful message); torch is not imported because that takes seconds and the server reports it.
    """
    command = [python, "-c", _PROBE_SCRIPT, str(minimum[0]), str(minimum[1]), *BACKEND_IMPORTS]
    try:
        result = subprocess.run(command, env=backend_environment(python, extra_path, base_env),
                                capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
                                **popen_options(os.name, own_group=False))
    except OSError as error:
        return BackendProbe(False, None, f"{python} cannot be run: {error}")
    except subprocess.TimeoutExpired:
        return BackendProbe(False, None, f"{python} did not finish checking its packages within {timeout_s:.0f} s")
    answers: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        if line.startswith(_PROBE_PREFIX):
            key, _, value = line[len(_PROBE_PREFIX):].partition(" ")
            answers[key] = value.strip()
    try:
        version = tuple(int(part) for part in answers["version"].split("."))
    except (KeyError, ValueError):
        output = _last_lines(result.stderr) or _last_lines(result.stdout) or "no output"
        return BackendProbe(False, None, f"{python} does not start as a Python interpreter "
                                         f"(exit code {result.returncode}):\n{output}")
    version_text = ".".join(str(part) for part in version)
    if version[:2] < tuple(minimum):
        return BackendProbe(False, version, f"Python {version_text} at {python} is too old: the backend needs "
                                            f"Python {minimum[0]}.{minimum[1]} or newer (Slicer 5.10 or newer)")
    if "missing" in answers:
        return BackendProbe(False, version, f"Python {version_text} at {python} cannot import "
                                            f"{answers['missing']}: {answers.get('error', '')}")
    if result.returncode != 0 or "ok" not in answers:
        output = _last_lines(result.stderr) or "no output"
        return BackendProbe(False, version, f"Python {version_text} at {python} stopped (exit code "
                                            f"{result.returncode}) while importing the backend:\n{output}")
    return BackendProbe(True, version, "")


class LocalBackend:
    """One server process on loopback.

    Args:
        python: interpreter that runs the backend.
        port: TCP port (a free one when None).
        device: "auto", "cpu" or "cuda" (passed to ``serve --device``).
        extra_args: more ``serve`` arguments (e.g. ["--models", "my-model"]).
        extra_path: folders put first on PYTHONPATH (the bundled backend when None).
        env: extra environment variables (e.g. TSFM_HOME).
        base_env: environment to start from for an interpreter that is not this process's own
            (see ``backend_environment``); None inherits this process's environment.
    """

    def __init__(self, python: str = sys.executable, port: int | None = None, device: str = "auto",
                 extra_args: list[str] | None = None, extra_path: list[Path] | None = None,
                 env: dict[str, str] | None = None, base_env: dict[str, str] | None = None) -> None:
        self.python = python
        self.port = port or free_port()
        self.device = device
        self.extra_args = list(extra_args or [])
        self.extra_path = extra_path
        self.env = dict(env or {})
        self.base_env = None if base_env is None else dict(base_env)
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

        ``on_wait(elapsed_s)`` is called while waiting (Slicer uses it to keep the GUI responsive, so
        ``stop`` may run inside it: the wait then ends with BackendStartError).
        """
        if self.is_running():
            return self.url
        env = backend_environment(self.python, self.extra_path, self.base_env)
        env.update(self.env)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
        try:
            process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, **popen_options(os.name))
        except OSError as error:
            raise BackendStartError(f"cannot run {self.python!r}: {error}") from error
        finally:
            log.close()
        self.process = process
        atexit.register(self.stop)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process is not process:
                raise BackendStartError(f"the backend on {self.url} was stopped before it answered")
            if process.poll() is not None:
                raise BackendStartError(f"the backend exited with code {process.returncode}:\n{self.log_tail()}")
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
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False,
                           **popen_options(os.name, own_group=False))
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
