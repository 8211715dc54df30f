"""Installing the backend's packages into Slicer's Python must keep the torch the PyTorch extension chose.

The pure checks run on version strings; the last test runs the real pip of this environment against a
throw-away virtual environment and a folder of tiny hand-made wheels (no network): a "CUDA" torch
``2.5.1+cu121`` is installed, a newer plain torch is on offer, and a package asks for more than 2.5.1.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.mini_slicer import MODULE_DIR

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.install_plan import (  # noqa: E402
    CONSTRAINTS_FILE,
    TORCH_REQUIREMENT,
    installed_torch_version,
    pip_arguments,
    torch_problem,
)

REQUIREMENTS = MODULE_DIR / "Resources" / "backend-requirements.txt"


@pytest.mark.parametrize("version", ["2.4.0", "2.5.1+cu121", "2.6.0+cpu", "2.7.0.dev20250301+cu126", "3.0"])
def test_a_recent_enough_torch_is_fine(version: str) -> None:
    assert torch_problem(version) == ""


def test_an_old_torch_is_named_with_what_is_needed_and_where_to_upgrade() -> None:
    problem = torch_problem("2.3.1+cu118")
    assert problem.startswith("torch 2.3.1+cu118 is installed but the backend needs torch>=2.4: ")
    assert "PyTorch Utils" in problem and "restart Slicer" in problem
    assert torch_problem("2.5.1+cu121", requirement=">=2.6").startswith("torch 2.5.1+cu121 is installed but "
                                                                       "the backend needs torch>=2.6")
    assert TORCH_REQUIREMENT == ">=2.4"


def test_a_missing_or_unreadable_torch_is_said_so() -> None:
    assert torch_problem(None).startswith("PyTorch is not installed; the backend needs torch>=2.4: install it with "
                                          "the PyTorch extension")
    assert "invalid version 'cuda-nightly'" in torch_problem("cuda-nightly")
    with pytest.raises(ValueError, match="invalid torch requirement"):
        torch_problem("2.5.1", requirement="newest")


def test_the_installed_torch_version_keeps_its_local_part() -> None:
    torch = pytest.importorskip("torch")
    assert installed_torch_version() == torch.__version__


def test_pip_arguments_pin_the_exact_installed_build(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet" / "there"
    arguments = pip_arguments(REQUIREMENTS, "2.5.1+cu121", folder)
    constraints = folder / CONSTRAINTS_FILE
    assert arguments == ["-r", str(REQUIREMENTS), "-c", str(constraints)]
    assert constraints.read_text(encoding="utf-8") == "torch==2.5.1+cu121\n"
    pip_arguments(REQUIREMENTS, " 2.6.0 ", folder)
    assert constraints.read_text(encoding="utf-8") == "torch==2.6.0\n"
    with pytest.raises(ValueError, match="not a valid version"):
        pip_arguments(REQUIREMENTS, "latest", folder)


def test_the_backend_requirements_leave_torch_to_the_pytorch_extension() -> None:
    names = [re.split(r"[<>=!~ \[;]", line.strip())[0].lower() for line in REQUIREMENTS.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert names and "torch" not in names


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A pure-Python wheel with one empty module and the given Requires-Dist lines."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


@pytest.mark.slow
def test_pip_keeps_the_cuda_torch_or_refuses_instead_of_replacing_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "torch", "2.5.1+cu121", [])
    _wheel(wheels, "torch", "2.7.0", [])
    _wheel(wheels, "monai_like", "1.0", ["torch>=2.0"])
    _wheel(wheels, "greedy", "1.0", ["torch>=2.6"])
    target = tmp_path / "slicer-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    python = target / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")

    def pip(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
                               "install", "--no-index", "--find-links", str(wheels), *arguments],
                              capture_output=True, text=True, timeout=300, check=False)

    def torch_in_target() -> str:
        return subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    assert pip("torch==2.5.1+cu121").returncode == 0 and torch_in_target() == "2.5.1+cu121"
    fine, greedy = tmp_path / "fine.txt", tmp_path / "greedy.txt"
    fine.write_text("monai_like\n")
    greedy.write_text("greedy\n")

    kept = pip(*pip_arguments(fine, torch_in_target(), tmp_path / "plan"))
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert torch_in_target() == "2.5.1+cu121"
    refused = pip(*pip_arguments(greedy, torch_in_target(), tmp_path / "plan"))
    assert refused.returncode != 0 and "conflicting dependencies" in refused.stdout + refused.stderr, refused.stderr
    assert torch_in_target() == "2.5.1+cu121"
    # What the constraint prevents: the same install without it swaps the CUDA build for a plain one.
    assert pip("-r", str(greedy)).returncode == 0 and torch_in_target() == "2.7.0"
