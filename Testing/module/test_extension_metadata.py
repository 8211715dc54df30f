"""The extension's catalogue entry: the icon and screenshot URLs in CMakeLists.txt name real, small PNGs
of this repository (the Extensions Index shows them from the repository's main branch)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
RAW = re.compile(r"^https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/main/(?P<path>\S+)$")


def cmake_setting(name: str) -> list[str]:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1).split()


def test_icon_and_screenshots_are_files_of_this_repository() -> None:
    urls = cmake_setting("EXTENSION_ICONURL") + cmake_setting("EXTENSION_SCREENSHOTURLS")
    assert len(urls) >= 2
    for url in urls:
        match = RAW.match(url)
        assert match, f"{url} is not a raw file URL on the main branch"
        path = REPO / match.group("path")
        assert path.is_file(), f"{url} points at {path.relative_to(REPO)}, which does not exist"
        assert path.stat().st_size < 300_000, f"{path.name} is {path.stat().st_size} bytes"
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"


def test_screenshot_is_a_real_picture() -> None:
    for url in cmake_setting("EXTENSION_SCREENSHOTURLS"):
        with Image.open(REPO / RAW.match(url).group("path")) as image:
            assert image.width >= 600 and image.height >= 300
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 64, "a blank or placeholder image"
