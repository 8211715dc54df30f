"""The module's static parts: widget names used by the code exist in the .ui, CMake lists every file,
the install requirements follow the backend's, and the Qt-free backend launcher works without Slicer."""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "TSFMSegmentation"
PROVIDED_BY_SLICER = {"torch", "numpy", "simpleitk", "requests"}


def ui_widget_names() -> dict[str, str]:
    tree = ET.parse(MODULE / "Resources" / "UI" / "TSFMSegmentation.ui")
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


def test_every_widget_the_code_uses_is_in_the_ui_file() -> None:
    source = (MODULE / "TSFMSegmentation.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    names = ui_widget_names()
    assert used, "the widget should use widgets from the .ui file"
    assert sorted(used - set(names)) == []


def test_parameter_bindings_name_real_parameters() -> None:
    tree = ET.parse(MODULE / "Resources" / "UI" / "TSFMSegmentation.ui")
    bound = {p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    module = ast.parse((MODULE / "TSFMSegmentation.py").read_text(encoding="utf-8"))
    wrapper = next(node for node in module.body
                   if isinstance(node, ast.ClassDef) and node.name == "TSFMSegmentationParameterNode")
    fields = {stmt.target.id for stmt in wrapper.body if isinstance(stmt, ast.AnnAssign)}
    assert bound and bound <= fields
    assert "token" not in {f.lower() for f in fields}, "the token must never be stored in the scene"


def test_cmake_lists_every_module_file() -> None:
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "TSFMSegmentation")
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    files = [p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.name != "CMakeLists.txt"]
    missing = [str(p.relative_to(MODULE)) for p in files if str(p.relative_to(MODULE)) not in cmake]
    assert missing == []


def test_install_requirements_cover_the_backend_without_pinning_torch() -> None:
    project = tomllib.loads((REPO / "Backend" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["server"]
    lines = [line.strip() for line in (MODULE / "Resources" / "backend-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    listed = {re.split(r"[<>=!~ ]", line)[0].lower() for line in lines}
    required = {re.split(r"[<>=!~ \[]", dep)[0].lower() for dep in needed}
    assert required - PROVIDED_BY_SLICER == listed
    assert not any("==" in line for line in lines)


def test_icons_are_real_128_pixel_pngs() -> None:
    from PIL import Image

    for path in (MODULE / "Resources" / "Icons" / "TSFMSegmentation.png", REPO / "Resources" / "TSFMSegmentation.png"):
        with Image.open(path) as icon:
            assert icon.format == "PNG" and icon.size == (128, 128)


def test_local_backend_launcher_reports_a_failing_start(tmp_path: Path) -> None:
    sys.path.insert(0, str(MODULE))
    from TSFMSegmentationLib.backend_process import BackendStartError, LocalBackend, free_port

    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named tsfm_backend' >&2\nexit 3\n")
    broken.chmod(0o755)
    backend = LocalBackend(python=str(broken), port=free_port())
    with pytest.raises(BackendStartError, match="exited with code 3(.|\n)*No module named tsfm_backend"):
        backend.start(timeout_s=20)
    assert not backend.is_running()
    with pytest.raises(BackendStartError, match="cannot run"):
        LocalBackend(python=str(tmp_path / "missing")).start(timeout_s=5)


@pytest.mark.slicer
def test_module_metadata_cites_the_seed_papers_and_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import slicer
    from support import mini_slicer

    mini_slicer.install_stand_ins()
    from TSFMSegmentation import TSFMSegmentation

    connected = []
    # The application object is absent here; the module only asks it to call back at start-up.
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda *args: connected.append(args)),
                        raising=False)
    parent = types.SimpleNamespace()
    TSFMSegmentation(parent)
    assert [signal for signal, _slot in connected] == ["startupCompleted()"]
    assert parent.title and parent.categories == ["Segmentation"] and parent.contributors
    for reference in ("2304.06716", "2403.06396", "2306.16925", "ICLR 2024", "2306.13465",
                      "10.7937/K9/TCIA.2015.7GO2GSKS", "TotalSegmentator"):
        assert reference in parent.helpText
