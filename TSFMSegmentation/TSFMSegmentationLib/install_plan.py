"""What to pip install into Slicer's Python for the backend without touching the torch already there.

Slicer's PyTorch extension installs the torch build that matches the GPU driver (for example
``2.5.1+cu121``, from PyTorch's own index). pip does not know that this build is special: when any
requirement (a new monai's ``torch>=...``) is not met by it, pip replaces it with the newest torch
from PyPI, which on Windows is a CPU-only build, and the backend silently loses the GPU. A
constraints file pinning torch to exactly the installed version, local part included, makes pip keep
it or stop with a conflict it names. Upgrading torch stays the PyTorch extension's job.

Qt-free (stdlib and ``packaging``, which Slicer ships with its Python).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

TORCH_REQUIREMENT = ">=2.4"
CONSTRAINTS_FILE = "tsfm-backend-constraints.txt"


def installed_torch_version() -> str | None:
    """The installed torch distribution's version (e.g. "2.5.1+cu121"), read without importing torch."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_problem(installed_version: str | None, requirement: str = TORCH_REQUIREMENT) -> str:
    """Empty when ``installed_version`` meets ``requirement``, else what is wrong and what to do.

    A pre-release or nightly that meets the bound counts as fine: whoever installed it chose it.
    """
    try:
        wanted = SpecifierSet(requirement)
    except InvalidSpecifier as error:
        raise ValueError(f"invalid torch requirement {requirement!r}: {error}") from error
    how = ("install it with the PyTorch extension (module 'PyTorch Utils', version requirement "
           f"'{requirement}'), then restart Slicer")
    if not installed_version:
        return f"PyTorch is not installed; the backend needs torch{requirement}: {how}"
    try:
        version = Version(installed_version)
    except InvalidVersion:
        return f"the installed torch reports an invalid version {installed_version!r}: {how}"
    if not wanted.contains(version, prereleases=True):
        return (f"torch {installed_version} is installed but the backend needs torch{requirement}: "
                f"uninstall it in the PyTorch Utils module, restart Slicer, and {how}")
    return ""


def pip_arguments(requirements_file: Path, torch_version: str, constraints_dir: Path) -> list[str]:
    """``pip install`` arguments for ``requirements_file`` that keep torch at ``torch_version`` exactly.

    Writes ``constraints_dir/CONSTRAINTS_FILE`` with ``torch==<torch_version>`` (the local part such as
    ``+cu121`` kept, so that no other build of the same release qualifies either) and returns
    ``["-r", requirements, "-c", constraints]``.
    """
    text = torch_version.strip()
    try:
        Version(text)
    except InvalidVersion as error:
        raise ValueError(f"torch version {torch_version!r} is not a valid version") from error
    constraints_dir.mkdir(parents=True, exist_ok=True)
    constraints = constraints_dir / CONSTRAINTS_FILE
    constraints.write_text(f"torch=={text}\n", encoding="utf-8")
    return ["-r", str(requirements_file), "-c", str(constraints)]
