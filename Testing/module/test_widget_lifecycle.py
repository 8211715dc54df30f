"""What the Widget relies on across the module's life: keys that leave Slicer's own alone, and an
embedded Segment Editor node that survives File > Close Scene (checked on the real MRML scene)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "TSFMSegmentation"
sys.path.insert(0, str(MODULE))
from TSFMSegmentationLib.shortcuts import SHORTCUTS, clashes  # noqa: E402

UI_FILE = MODULE / "Resources" / "UI" / "TSFMSegmentation.ui"


def test_no_shortcut_takes_a_key_of_slicers_views_or_segment_editor() -> None:
    assert clashes() == []


@pytest.mark.parametrize("key", ["b", "B", "F", "r", "s", "z", "Space", "3", "Shift+3", "Ctrl+Z"])
def test_a_reserved_key_is_reported(key: str) -> None:
    assert clashes({"box": key}) != []


def test_a_key_bound_twice_is_reported() -> None:
    assert clashes({"box": "Shift+B", "other": "shift+b"}) == ["other: shift+b is also the key of box"]


def test_tooltips_name_the_installed_keys() -> None:
    tips = " ".join(p.findtext("string") or "" for p in ET.parse(UI_FILE).iter("property")
                    if p.get("name") == "toolTip")
    for action in ("positive_points", "negative_points", "box", "undo", "redo", "next_segment"):
        assert SHORTCUTS[action] in tips, action


@pytest.mark.slicer
def test_segment_editor_node_comes_back_after_close_scene(mini) -> None:  # noqa: ANN001
    import slicer

    from TSFMSegmentation import TSFMSegmentationLogic

    logic = TSFMSegmentationLogic()
    first = logic.ensureSegmentEditorNode()
    assert logic.ensureSegmentEditorNode() is first  # no second node while the first is in the scene
    assert first.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone
    assert logic.editSettings().overwrite_mode == slicer.vtkMRMLSegmentEditorNode.OverwriteNone

    slicer.mrmlScene.Clear(0)  # what File > Close Scene does
    assert not slicer.mrmlScene.IsNodePresent(first)
    second = logic.ensureSegmentEditorNode()
    assert second is not first and slicer.mrmlScene.IsNodePresent(second)
    assert len(slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode")) == 1
    assert second.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone


@pytest.mark.slicer
def test_closing_the_interactive_session_ends_it_on_the_server(logic, ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.client import NotFound, SessionExpired

    editor = logic.startInteractive(ct_node, "tiny-click")
    session_id = editor.session_id
    logic.closeInteractive()
    assert logic.editor is None
    with pytest.raises((NotFound, SessionExpired)):
        editor.client.heartbeat(session_id)
    logic.closeInteractive()  # nothing open: nothing to do
