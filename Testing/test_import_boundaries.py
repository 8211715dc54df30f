"""The dependency rules of DESIGN.md, checked on every Python file of the repository.

1. The Slicer module never imports torch, tsfm_backend or tsfm_training: it speaks HTTP /v1.
2. The module's client, wire, backend_process and logic_downloads files import no slicer, qt, vtk or ctk.
3. The backend never imports slicer, qt, vtk, ctk, tsfm_training or the module.
4. Inside the backend: models import neither inference nor server; inference does not import server.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUI_TOP_LEVEL = {"slicer", "qt", "vtk", "ctk", "PythonQt", "vtkmodules"}
QT_FREE_LIB_FILES = {"client.py", "wire.py", "backend_process.py", "logic_connection.py", "logic_downloads.py",
                     "install_plan.py", "shortcuts.py", "model_choices.py"}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported!r} ({self.rule})"


def imported_modules(source: str, module_name: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file; relative imports are resolved."""
    found: list[tuple[int, str]] = []
    package_parts = module_name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    return ".".join(parts)


def _rules_for(path: Path, root: Path) -> tuple[str, list[tuple[str, str]]]:
    """(module name, [(forbidden prefix, rule)]) for one file; no rules for files outside the parts."""
    relative = path.relative_to(root)
    top = relative.parts[0]
    forbidden: list[tuple[str, str]] = []
    if top == "TSFMSegmentation":
        module_name = _module_name(path, root / "TSFMSegmentation")
        for name in ("torch", "tsfm_backend", "tsfm_training"):
            forbidden.append((name, "the Slicer module talks to the backend over HTTP only"))
        if relative.parent.name == "TSFMSegmentationLib" and relative.name in QT_FREE_LIB_FILES:
            for name in sorted(GUI_TOP_LEVEL):
                forbidden.append((name, "these Qt-free module files must run without Slicer"))
        return module_name, forbidden
    if top == "Backend" and len(relative.parts) > 1 and relative.parts[1] == "tsfm_backend":
        module_name = _module_name(path, root / "Backend")
        for name in sorted(GUI_TOP_LEVEL) + ["tsfm_training", "TSFMSegmentation", "TSFMSegmentationLib"]:
            forbidden.append((name, "the backend runs without Slicer and never imports training"))
        layer = relative.parts[2] if len(relative.parts) > 3 else ""
        if layer == "models":
            forbidden += [
                ("tsfm_backend.inference", "models sit below inference"),
                ("tsfm_backend.server", "models sit below the server"),
            ]
        elif layer == "inference":
            forbidden.append(("tsfm_backend.server", "inference sits below the server"))
        return module_name, forbidden
    return "", []


def find_violations(root: Path) -> list[Violation]:
    violations: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        if any(part.startswith(".") or part in {"build", "__pycache__"} for part in path.relative_to(root).parts):
            continue
        module_name, forbidden = _rules_for(path, root)
        if not forbidden:
            continue
        for line, imported in imported_modules(path.read_text(encoding="utf-8"), module_name):
            for prefix, rule in forbidden:
                if imported == prefix or imported.startswith(prefix + "."):
                    violations.append(Violation(path.relative_to(root), line, imported, rule))
                    break
    return violations


def test_repository_respects_the_dependency_rules() -> None:
    violations = find_violations(REPO)
    assert not violations, "\n".join(str(v) for v in violations)


def _write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("TSFMSegmentation/TSFMSegmentation.py", "import torch\n", "torch"),
        ("TSFMSegmentation/TSFMSegmentationLib/segments.py", "from tsfm_backend.volume import Volume\n",
         "tsfm_backend.volume"),
        ("TSFMSegmentation/TSFMSegmentationLib/client.py", "import slicer.util\n", "slicer.util"),
        ("TSFMSegmentation/TSFMSegmentationLib/wire.py", "from qt import QTimer\n", "qt"),
        ("Backend/tsfm_backend/server/app.py", "import tsfm_training.loop\n", "tsfm_training.loop"),
        ("Backend/tsfm_backend/checkpoints.py", "import vtk\n", "vtk"),
        ("Backend/tsfm_backend/models/stunet.py", "from ..inference import sliding_window\n",
         "tsfm_backend.inference"),
        ("Backend/tsfm_backend/inference/segmenter.py", "from tsfm_backend.server import app\n",
         "tsfm_backend.server"),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path: Path, relative: str, source: str, expected: str) -> None:
    _write(tmp_path, relative, "import numpy\n" + source)
    violations = find_violations(tmp_path)
    assert [(str(v.path), v.line, v.imported) for v in violations][:1] == [(relative, 2, expected)]


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("TSFMSegmentation/TSFMSegmentationLib/segments.py", "import slicer\nimport vtk\n"),
        ("Backend/tsfm_backend/inference/segmenter.py", "from ..models import stunet\nimport torch\n"),
        ("training/tsfm_training/loop.py", "from tsfm_backend.models import stunet\n"),
    ],
)
def test_allowed_imports_pass(tmp_path: Path, relative: str, source: str) -> None:
    _write(tmp_path, relative, source)
    assert find_violations(tmp_path) == []
