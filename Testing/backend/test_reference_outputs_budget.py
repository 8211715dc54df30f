"""The stored outputs of the seed authors' code stay small: every file under ``reference_outputs``, in
sub-folders too, counts against one budget (they travel with every checkout of the repository)."""

from __future__ import annotations

from pathlib import Path

from support.reference_outputs import REFERENCE_DIR

BUDGET_BYTES = 1536 << 10  # 1.5 MiB


def stored_bytes(folder: Path) -> dict[str, int]:
    """Size of every file under ``folder``, sub-folders included, by relative path (bytecode caches aside)."""
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_reference_outputs_fit_the_budget():
    sizes = stored_bytes(REFERENCE_DIR)
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert sum(sizes.values()) < BUDGET_BYTES, f"{sum(sizes.values()):,} bytes; largest: {largest}"


def test_files_in_sub_folders_count(tmp_path):
    (tmp_path / "family" / "deeper").mkdir(parents=True)
    (tmp_path / "top.npz").write_bytes(b"x" * 50)
    (tmp_path / "family" / "make_family_reference.py").write_bytes(b"x" * 70)
    (tmp_path / "family" / "deeper" / "family.npz").write_bytes(b"x" * 100)
    (tmp_path / "family" / "__pycache__").mkdir()
    (tmp_path / "family" / "__pycache__" / "make_family_reference.pyc").write_bytes(b"x" * 1000)
    assert stored_bytes(tmp_path) == {"top.npz": 50, "family/make_family_reference.py": 70,
                                      "family/deeper/family.npz": 100}
