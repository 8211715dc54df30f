"""Which Python can run the local backend, and with which environment: real interpreters, real subprocesses.

Inside Slicer the process environment points at Slicer's own Python (PYTHONHOME, PYTHONPATH); an
external interpreter started with it dies at start. These tests recreate that with bogus and foreign
values in the parent's environment and check that ``base_env`` shields the child from them, and that
the probe reports what went wrong in words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.mini_slicer import MODULE_DIR, REPO

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.backend_process import (  # noqa: E402
    MIN_PYTHON,
    BackendStartError,
    LocalBackend,
    backend_environment,
    is_same_interpreter,
    popen_options,
    probe_backend,
)

HERE = ".".join(str(part) for part in sys.version_info[:3])
posix_only = pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell script as the interpreter")


def poisoned_backend(folder: Path, message: str) -> Path:
    """A folder whose ``tsfm_backend`` leaves ``imported`` in ``folder`` and raises ImportError(message)."""
    package = folder / "tsfm_backend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(folder / 'imported')!r}, 'w').close()\n"
                                         f"raise ImportError({message!r})\n", encoding="utf-8")
    return folder


def working_pythons() -> list[tuple[Path, tuple[int, int]]]:
    """Interpreters on this machine that really run (PATH shims that do not are left out), with versions."""
    names = [f"python3.{minor}" for minor in range(6, 15)] + ["python2.7", "python2"]
    candidates = [Path(found) for name in names if (found := shutil.which(name))]
    candidates += sorted((Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions").glob("*/bin/python[23].*[0-9]"))
    found: list[tuple[Path, tuple[int, int]]] = []
    for python in candidates:
        try:
            answer = subprocess.run([str(python), "-c", "import sys; sys.stdout.write('%d %d' % sys.version_info[:2])"],
                                    capture_output=True, text=True, timeout=30, check=True, env={})
            major, minor = (int(part) for part in answer.stdout.split())
        except (OSError, ValueError, subprocess.SubprocessError):
            continue
        found.append((python, (major, minor)))
    return found


def other_python_stdlib() -> Path | None:
    """The standard library folder of an installed Python 3 of another minor version, if any."""
    for python, version in working_pythons():
        if version[0] != 3 or version[1] == sys.version_info[1]:
            continue
        stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                                capture_output=True, text=True, timeout=30, check=False, env={}).stdout.strip()
        if stdlib and (Path(stdlib) / "re").exists():
            return Path(stdlib)
    return None


def test_this_python_can_run_the_backend() -> None:
    probe = probe_backend(sys.executable)
    assert probe.ok and probe.problem == ""
    assert probe.version == tuple(sys.version_info[:3])


def test_a_too_old_python_is_named_before_any_import_is_tried(tmp_path: Path) -> None:
    poisoned = [poisoned_backend(tmp_path, "the import ran")]
    probe = probe_backend(sys.executable, extra_path=poisoned, minimum=(99, 0))
    assert not probe.ok and probe.version == tuple(sys.version_info[:3])
    assert probe.problem == (f"Python {HERE} at {sys.executable} is too old: the backend needs Python 99.0 "
                             "or newer (Slicer 5.10 or newer)")
    assert not (tmp_path / "imported").exists()
    assert MIN_PYTHON == (3, 10)


def test_a_real_old_python_is_reported_with_its_version() -> None:
    old = [(python, version) for python, version in working_pythons() if version < MIN_PYTHON]
    if not old:
        pytest.skip("no Python older than 3.10 on this machine")
    for python, version in old:
        probe = probe_backend(str(python))
        assert not probe.ok and probe.version is not None and probe.version[:2] == version
        text = ".".join(str(part) for part in probe.version)
        assert probe.problem == (f"Python {text} at {python} is too old: the backend needs Python 3.10 or newer "
                                 "(Slicer 5.10 or newer)")


def test_a_failing_import_names_the_module_and_the_last_line_of_its_error(tmp_path: Path) -> None:
    poisoned = [poisoned_backend(tmp_path, "while importing safetensors:\nNo module named 'safetensors'")]
    probe = probe_backend(sys.executable, extra_path=poisoned)
    assert not probe.ok and probe.version == tuple(sys.version_info[:3]) and (tmp_path / "imported").exists()
    assert probe.problem == (f"Python {HERE} at {sys.executable} cannot import tsfm_backend: "
                             "ImportError: No module named 'safetensors'")


def test_a_path_that_cannot_run_is_said_so(tmp_path: Path) -> None:
    missing = probe_backend(str(tmp_path / "bin" / "python"))
    assert not missing.ok and missing.version is None
    assert missing.problem.startswith(f"{tmp_path / 'bin' / 'python'} cannot be run: ")
    text = tmp_path / "python.txt"
    text.write_text("not a program\n")
    assert "cannot be run" in probe_backend(str(text)).problem


def test_an_interpreter_dying_at_start_is_reported_with_its_own_stderr(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "not-a-python-home"))
    probe = probe_backend(sys.executable)
    assert not probe.ok and probe.version is None
    assert probe.problem.startswith(f"{sys.executable} does not start as a Python interpreter (exit code ")
    assert "No module named 'encodings'" in probe.problem


def test_base_env_keeps_the_parents_python_settings_away_from_the_child(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    bogus = {"PYTHONHOME": str(tmp_path / "slicer-home"), "PYTHONPATH": str(tmp_path / "slicer-lib")}
    monkeypatch.setenv("PYTHONHOME", bogus["PYTHONHOME"])
    monkeypatch.setenv("PYTHONPATH", bogus["PYTHONPATH"])
    startup = {**os.environ, "SOMETHING_OF_THE_USER": "kept"}
    assert not probe_backend(sys.executable).ok
    assert probe_backend(sys.executable, base_env=startup).ok
    env = backend_environment(sys.executable, base_env=startup)
    assert "PYTHONHOME" not in env and env["SOMETHING_OF_THE_USER"] == "kept"
    assert env["PYTHONPATH"] == str(REPO / "Backend")


def test_foreign_standard_library_gives_the_real_start_error_and_base_env_avoids_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stdlib = other_python_stdlib()
    if stdlib is None:
        pytest.skip("no Python of another minor version on this machine")
    monkeypatch.setenv("PYTHONPATH", str(stdlib))
    direct = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, text=True, check=False)
    assert direct.returncode != 0, "another Python's standard library should break this one at start"
    last_line = direct.stderr.strip().splitlines()[-1]
    probe = probe_backend(sys.executable)
    assert not probe.ok and last_line in probe.problem
    assert probe_backend(sys.executable, base_env=dict(os.environ)).ok


def test_base_env_names_are_dropped_whatever_their_case() -> None:
    env = backend_environment("python", extra_path=[Path("/bundled")],
                              base_env={"PythonHome": "C:/Slicer/lib/Python", "PYTHONPATH": "C:/Slicer/lib",
                                        "PATH": "/usr/bin"})
    assert env["PYTHONPATH"] == str(Path("/bundled")) and "PythonHome" not in env and env["PATH"] == "/usr/bin"


def test_without_base_env_this_process_environment_is_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/site/extra")
    monkeypatch.setenv("TSFM_MARKER", "inherited")
    env = backend_environment("python", extra_path=[Path("/bundled")])
    assert env["PYTHONPATH"] == os.pathsep.join([str(Path("/bundled")), "/site/extra"])
    assert env["TSFM_MARKER"] == "inherited"


@posix_only
def test_the_server_process_gets_the_clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "slicer-home"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "slicer-lib"))
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nenv\nexit 5\n")
    python.chmod(0o755)
    backend = LocalBackend(python=str(python), base_env=dict(os.environ), env={"TSFM_HOME": str(tmp_path)})
    with pytest.raises(BackendStartError, match="exited with code 5"):
        backend.start(timeout_s=20)
    seen = dict(line.split("=", 1) for line in backend.log_path.read_text().splitlines() if "=" in line)
    assert "PYTHONHOME" not in seen and seen["PYTHONPATH"] == str(REPO / "Backend")
    assert seen["TSFM_HOME"] == str(tmp_path)


def test_popen_options_hide_the_console_window_on_windows_only() -> None:
    assert popen_options("nt") == {"creationflags": 0x08000000 | 0x00000200}
    assert popen_options("nt", own_group=False) == {"creationflags": 0x08000000}
    assert popen_options("posix") == {"start_new_session": True}
    assert popen_options("posix", own_group=False) == {}


def test_same_interpreter_sees_through_links_and_relative_paths(tmp_path: Path) -> None:
    link = tmp_path / "python-link"
    link.symlink_to(sys.executable)
    assert is_same_interpreter(sys.executable)
    assert is_same_interpreter(str(link), current=sys.executable)
    assert is_same_interpreter(os.path.relpath(sys.executable), current=sys.executable)
    other = tmp_path / "python"
    other.write_text("")
    assert not is_same_interpreter(str(other), current=sys.executable)
    assert not is_same_interpreter("", current=sys.executable)
