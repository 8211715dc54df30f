"""The module's keyboard shortcuts, as data, and the keys they must leave alone.

The Widget installs them on the main window when the module is entered (so they work while the mouse
is over a slice or 3D view) and deletes them when it is left, reloaded or closed, as Slicer's Segment
Editor does with its own (``qMRMLSegmentEditorWidget::installKeyboardShortcuts``). A shortcut on the
main window takes its key before the views see it, so none of ours may use a key that Slicer's views
or the embedded Segment Editor already bind.
"""

from __future__ import annotations

# action -> Qt key sequence (QKeySequence text)
SHORTCUTS: dict[str, str] = {
    "positive_points": "P",
    "negative_points": "N",
    "box": "Shift+B",
    "undo": "Ctrl+Alt+Z",
    "redo": "Ctrl+Alt+Y",
    "next_segment": "Ctrl+Alt+N",
}

# Keys without modifier that Slicer binds while the mouse is over a view (Libs/MRML/DisplayableManager:
# vtkMRMLSliceIntersectionWidget: b f g t v r and the arrows; vtkMRMLCameraWidget: b r, +, -;
# Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget: s, Delete, BackSpace, Escape) and that the
# embedded Segment Editor binds (qMRMLSegmentEditorWidget::installKeyboardShortcuts: 0-9 and Shift+0-9,
# Escape, Space, z y q w i / * , . < >, and the standard Undo/Redo).
RESERVED_KEYS: frozenset[str] = frozenset(
    {"B", "F", "G", "T", "V", "R", "S", "Z", "Y", "Q", "W", "I", "+", "-", "/", "*", ",", ".", "<", ">",
     "Space", "Escape", "Delete", "Backspace", "Left", "Right", "Up", "Down", "Home", "End", "Insert",
     "PgDown", "Ctrl+Z", "Ctrl+Y", "Ctrl+Shift+Z"}
    | {str(digit) for digit in range(10)} | {f"Shift+{digit}" for digit in range(10)}
)


def clashes(shortcuts: dict[str, str] = SHORTCUTS) -> list[str]:
    """Actions whose key is reserved by Slicer, or bound twice; empty when all keys are free."""
    seen: dict[str, str] = {}
    problems = []
    for action, key in shortcuts.items():
        normalised = "+".join(part.capitalize() if len(part) > 1 else part.upper() for part in key.split("+"))
        if normalised in RESERVED_KEYS:
            problems.append(f"{action}: {key} is a key Slicer's views or Segment Editor use")
        if normalised in seen:
            problems.append(f"{action}: {key} is also the key of {seen[normalised]}")
        seen[normalised] = action
    return problems
